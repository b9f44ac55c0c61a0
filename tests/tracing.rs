//! One trace across every hop of two nodes, received over OTLP by a collector in the test:
//! gateway → kernel → log-store and delivery → outbound POST → the peer node's gateway and
//! kernel, with correct parent links and the semantic-convention attributes; the same for a
//! Publish from a platform app that sends its own traceparent. Spans are flushed when the
//! nodes shut down; metrics arrive over OTLP too.

mod support;

use fedsx_proto::kernel::v1::kernel_client::KernelClient;
use fedsx_proto::kernel::v1::{ActorRequest, CreateActorRequest, PublishRequest};
use fedsx_proto::wire::v1::ActivityType;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use support::{Node, TestDir, eventually, free_addr};
use tonic::{Request, Response, Status};

/// A span as received, with its process's resource.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    node: String,
    span: Span,
}

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
    /// (node, service.name) of every metrics export.
    metrics: Arc<Mutex<BTreeSet<(String, String)>>>,
}

fn attr(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?;
    Some(match value {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(i) => i.to_string(),
        Value::BoolValue(b) => b.to_string(),
        Value::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    })
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans.resource.unwrap_or_default().attributes;
            let service = attr(&resource, "service.name").unwrap_or_default();
            let node = attr(&resource, "service.namespace").unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(Received {
                        service: service.clone(),
                        node: node.clone(),
                        span,
                    });
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let mut metrics = self.metrics.lock().unwrap();
        for resource_metrics in request.into_inner().resource_metrics {
            let resource = resource_metrics.resource.unwrap_or_default().attributes;
            let has_points = resource_metrics.scope_metrics.iter().any(|s| !s.metrics.is_empty());
            if has_points {
                metrics.insert((
                    attr(&resource, "service.namespace").unwrap_or_default(),
                    attr(&resource, "service.name").unwrap_or_default(),
                ));
            }
        }
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

impl Collector {
    async fn start() -> (Collector, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let collector = Collector::default();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .add_service(MetricsServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        tokio::spawn(server);
        (collector, format!("http://{addr}"))
    }
}

/// The spans of one trace, by span id.
struct Trace {
    spans: HashMap<Vec<u8>, Received>,
}

impl Trace {
    fn of(all: &[Received], trace_id: &[u8]) -> Trace {
        let spans = all
            .iter()
            .filter(|r| r.span.trace_id == trace_id)
            .map(|r| (r.span.span_id.clone(), r.clone()))
            .collect();
        Trace { spans }
    }

    /// The one span of this trace named `name` from `service` on `node` (the first, if several).
    fn find(&self, node: &str, service: &str, name: &str) -> &Received {
        let mut found: Vec<&Received> = self
            .spans
            .values()
            .filter(|r| r.node == node && r.service == service && r.span.name == name)
            .collect();
        found.sort_by_key(|r| r.span.start_time_unix_nano);
        found.first().copied().unwrap_or_else(|| {
            let names: BTreeSet<String> = self
                .spans
                .values()
                .map(|r| format!("{} {} {}", r.node, r.service, r.span.name))
                .collect();
            panic!("no span {name:?} of {service} on {node} in the trace; it has:\n{names:#?}")
        })
    }

    /// Whether `ancestor` is on the parent chain of `span`.
    fn descends(&self, span: &Received, ancestor: &Received) -> bool {
        let mut parent = span.span.parent_span_id.clone();
        while !parent.is_empty() {
            if parent == ancestor.span.span_id {
                return true;
            }
            match self.spans.get(&parent) {
                Some(next) => parent = next.span.parent_span_id.clone(),
                None => return false,
            }
        }
        false
    }
}

fn assert_child(child: &Received, parent: &Received) {
    assert_eq!(
        child.span.parent_span_id, parent.span.span_id,
        "{} ({}) should be a child of {} ({})",
        child.span.name, child.service, parent.span.name, parent.service
    );
}

fn attribute(span: &Received, key: &str) -> String {
    attr(&span.span.attributes, key).unwrap_or_else(|| {
        let keys: Vec<&str> = span.span.attributes.iter().map(|kv| kv.key.as_str()).collect();
        panic!("span {} has no {key}; it has {keys:?}", span.span.name)
    })
}

const INBOX_ROUTE: &str = "POST /inbox";

fn refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_trace_crosses_every_hop_of_two_nodes() {
    let (collector, endpoint) = Collector::start().await;
    let dir = TestDir::new();
    let env_for = |node: &str| {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), endpoint.clone()),
            (
                "OTEL_RESOURCE_ATTRIBUTES".to_owned(),
                format!("service.namespace={node}"),
            ),
            // Spans leave only when a batch fills or at shutdown: the test relies on the flush.
            ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "600000".to_owned()),
            ("OTEL_METRIC_EXPORT_INTERVAL".to_owned(), "500".to_owned()),
        ]
    };
    let (env_a, env_b) = (env_for("node-a"), env_for("node-b"));
    let schedule = "200ms,400ms,800ms,1600ms,3200ms";
    let mut a = Node::start_with_env("a", &dir.join("a"), free_addr(), schedule, dir.path(), &refs(&env_a))
        .await
        .unwrap();
    let mut b = Node::start_with_env("b", &dir.join("b"), free_addr(), schedule, dir.path(), &refs(&env_b))
        .await
        .unwrap();
    let mut ka = KernelClient::new(support::channel(&a.kernel_url()).await.unwrap());
    let mut kb = KernelClient::new(support::channel(&b.kernel_url()).await.unwrap());
    ka.create_actor(CreateActorRequest { name: "alice".into() })
        .await
        .unwrap();
    kb.create_actor(CreateActorRequest { name: "bob".into() })
        .await
        .unwrap();
    support::follow_and_wait(&kb, "bob", &format!("{}/actors/alice", a.url())).await;

    // A platform app publishes inside its own trace.
    let app_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let app_span = "00f067aa0ba902b7";
    let mut publish = Request::new(PublishRequest {
        actor: "alice".into(),
        r#type: ActivityType::Create.into(),
        to: vec!["followers".into()],
        content: "traced note".into(),
        ..PublishRequest::default()
    });
    let traceparent = format!("00-{app_trace}-{app_span}-01");
    publish
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    ka.publish(publish).await.unwrap();
    eventually("the note in bob's inbox", || {
        let mut kb = kb.clone();
        async move {
            let tips = kb.tips(ActorRequest { name: "bob".into() }).await.ok()?.into_inner();
            (tips.inbox_tip == 2).then_some(())
        }
    })
    .await
    .unwrap();
    eventually("OTLP metrics from all four processes of node A", || {
        let metrics = collector.metrics.lock().unwrap().clone();
        async move {
            let services = ["fedsx-gateway", "fedsx-kernel", "fedsx-log-store", "fedsx-delivery"];
            services
                .iter()
                .all(|s| metrics.contains(&("node-a".to_owned(), (*s).to_owned())))
                .then_some(())
        }
    })
    .await
    .unwrap();

    // Prometheus scrapes of the gateway and of a gRPC service's port are not traced.
    for url in [a.url(), a.kernel_url()] {
        support::scrape(&url).await;
    }

    // Stopping flushes what is batched.
    assert!(a.stop().await.unwrap().success());
    assert!(b.stop().await.unwrap().success());
    let all = collector.spans.lock().unwrap().clone();
    let scrapes: Vec<&str> = all
        .iter()
        .map(|r| r.span.name.as_str())
        .filter(|name| name.contains("metrics"))
        .collect();
    assert!(scrapes.is_empty(), "scrapes traced: {scrapes:?}");

    // The Follow arriving at node A: its inbound POST starts the part of the trace we follow.
    let inbound_a = all
        .iter()
        .find(|r| r.node == "node-a" && r.service == "fedsx-gateway" && r.span.name == INBOX_ROUTE)
        .expect("node A's gateway span for the inbound Follow");
    let trace = Trace::of(&all, &inbound_a.span.trace_id);
    assert_eq!(inbound_a.span.kind, SpanKind::Server as i32);
    assert_eq!(attribute(inbound_a, "http.route"), "/inbox", "the node inbox");
    assert_eq!(attribute(inbound_a, "http.request.method"), "POST");
    assert_eq!(attribute(inbound_a, "http.response.status_code"), "202");

    // Each gRPC hop is a client span in the caller and a server span in the callee.
    let call_a = trace.find("node-a", "fedsx-gateway", "fedsx.kernel.v1.Kernel/Ingest");
    assert_eq!(call_a.span.kind, SpanKind::Client as i32);
    assert_child(call_a, inbound_a);
    let ingest_a = trace.find("node-a", "fedsx-kernel", "fedsx.kernel.v1.Kernel/Ingest");
    assert_child(ingest_a, call_a);
    assert_eq!(ingest_a.span.kind, SpanKind::Server as i32);
    assert_eq!(attribute(ingest_a, "rpc.system"), "grpc");
    assert_eq!(attribute(ingest_a, "rpc.service"), "fedsx.kernel.v1.Kernel");
    assert_eq!(attribute(ingest_a, "rpc.method"), "Ingest");
    assert_eq!(attribute(ingest_a, "rpc.grpc.status_code"), "0");
    let pipeline_a = trace.find("node-a", "fedsx-kernel", "ingest");
    assert_child(pipeline_a, ingest_a);
    assert_eq!(attribute(pipeline_a, "fedsx.recipient"), "(node inbox)");
    assert_eq!(attribute(pipeline_a, "fedsx.recipients"), "1");
    assert_eq!(attribute(pipeline_a, "fedsx.actor"), format!("{}/actors/bob", b.url()));
    assert_eq!(attribute(pipeline_a, "fedsx.seq"), "1");
    assert_eq!(attribute(pipeline_a, "fedsx.activity_id").len(), 64);

    let append_a = trace.find("node-a", "fedsx-log-store", "fedsx.logstore.v1.LogStore/Append");
    assert!(trace.descends(append_a, ingest_a), "log-store append under the ingest");
    let append_call = trace.find("node-a", "fedsx-kernel", "fedsx.logstore.v1.LogStore/Append");
    assert_eq!(append_call.span.kind, SpanKind::Client as i32);
    assert_eq!(attribute(append_call, "rpc.system"), "grpc");
    assert_child(append_a, append_call);
    let accept = trace.find("node-a", "fedsx-kernel", "publish");
    assert!(
        trace.descends(accept, ingest_a),
        "the auto-Accept is published under the ingest"
    );
    let handoff = trace.find("node-a", "fedsx-kernel", "hand-off");
    assert!(
        trace.descends(handoff, accept),
        "the Accept's hand-off continues the trace"
    );
    let enqueue_a = trace.find(
        "node-a",
        "fedsx-delivery",
        "fedsx.delivery.v1.Delivery/EnqueueActivities",
    );
    assert!(
        trace.descends(enqueue_a, handoff),
        "the enqueue happens under the hand-off"
    );
    let enqueue_call = trace.find("node-a", "fedsx-kernel", "fedsx.delivery.v1.Delivery/EnqueueActivities");
    assert_eq!(enqueue_call.span.kind, SpanKind::Client as i32);
    assert_child(enqueue_a, enqueue_call);
    let post_a = trace.find("node-a", "fedsx-delivery", "POST");
    assert_eq!(post_a.span.kind, SpanKind::Client as i32);
    assert_child(post_a, handoff);
    assert_eq!(attribute(post_a, "fedsx.peer"), b.url(), "the destination node");
    assert_eq!(attribute(post_a, "http.response.status_code"), "202");

    // Across the network, into node B.
    let inbound_b = trace.find("node-b", "fedsx-gateway", INBOX_ROUTE);
    assert_child(inbound_b, post_a);
    let ingest_b = trace.find("node-b", "fedsx-kernel", "fedsx.kernel.v1.Kernel/Ingest");
    assert!(trace.descends(ingest_b, inbound_b));
    assert!(
        trace.descends(ingest_b, inbound_a),
        "one trace from A's inbound POST to B's kernel"
    );

    // The platform app's Publish: its trace, from its span to node B's kernel.
    let app_trace_id = hex::decode(app_trace).unwrap();
    let published = Trace::of(&all, &app_trace_id);
    let publish_a = published.find("node-a", "fedsx-kernel", "fedsx.kernel.v1.Kernel/Publish");
    assert_eq!(publish_a.span.parent_span_id, hex::decode(app_span).unwrap());
    let publish_inner = published.find("node-a", "fedsx-kernel", "publish");
    assert_eq!(attribute(publish_inner, "fedsx.actor"), "alice");
    assert_eq!(attribute(publish_inner, "fedsx.seq"), "2");
    let append = published.find("node-a", "fedsx-log-store", "fedsx.logstore.v1.LogStore/Append");
    assert!(published.descends(append, publish_a));
    let post = published.find("node-a", "fedsx-delivery", "POST");
    assert!(published.descends(post, publish_a));
    let delivered = published.find("node-b", "fedsx-kernel", "fedsx.kernel.v1.Kernel/Ingest");
    assert!(published.descends(delivered, post));
}
