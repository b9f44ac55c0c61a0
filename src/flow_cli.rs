//! `fedsx flow …`: start, signal, show and list durable flow instances through the kernel.

use crate::cli::{Target, failed, kernel};
use fedsx_gateway::flows::to_json;
use fedsx_proto::kernel::v1::{Flow, FlowStatus, GetFlowRequest, ListFlowsRequest, SignalRequest, StartFlowRequest};

#[derive(Debug, clap::Subcommand)]
pub enum FlowCommand {
    /// Start an instance of flow NAME (publish-digest, wait-timer) and run it until it
    /// suspends or ends.
    Start {
        name: String,
        /// The input, a JSON object, e.g. '{"actor":"alice","notes":5}'.
        #[arg(long, default_value = "{}")]
        input: String,
        #[command(flatten)]
        target: Target,
    },
    /// Resume instance ID with SIGNAL (e.g. approve, reject).
    Signal {
        id: String,
        signal: String,
        /// A JSON value handed to the flow with the signal.
        #[arg(long, default_value = "")]
        payload: String,
        #[command(flatten)]
        target: Target,
    },
    /// One instance: status, what it awaits, its data and output.
    Show {
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Instances, oldest first.
    List {
        /// Only instances of this flow.
        #[arg(long, default_value = "")]
        name: String,
        /// Only instances in this status: running, suspended, done or failed.
        #[arg(long, value_parser = status_arg)]
        status: Option<FlowStatus>,
        /// Only instances after this id (the previous page's last).
        #[arg(long, default_value = "")]
        after: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        target: Target,
    },
}

fn status_arg(text: &str) -> Result<FlowStatus, String> {
    FlowStatus::from_label(text).ok_or_else(|| format!("{text:?} is not one of running, suspended, done, failed"))
}

impl FlowCommand {
    pub fn target(&self) -> &Target {
        match self {
            FlowCommand::Start { target, .. }
            | FlowCommand::Signal { target, .. }
            | FlowCommand::Show { target, .. }
            | FlowCommand::List { target, .. } => target,
        }
    }
}

pub async fn run(command: FlowCommand) -> anyhow::Result<()> {
    let target = command.target().clone();
    let mut client = kernel(&target)?;
    let k = || failed("kernel", &target.kernel);
    match command {
        FlowCommand::Start { name, input, .. } => {
            let flow = client.start_flow(StartFlowRequest { name, input }).await.map_err(k())?;
            print_flow(&target, &flow.into_inner());
        }
        FlowCommand::Signal {
            id, signal, payload, ..
        } => {
            let request = SignalRequest { id, signal, payload };
            let flow = client.signal(request).await.map_err(k())?;
            print_flow(&target, &flow.into_inner());
        }
        FlowCommand::Show { id, .. } => {
            let flow = client.get_flow(GetFlowRequest { id }).await.map_err(k())?;
            print_flow(&target, &flow.into_inner());
        }
        FlowCommand::List {
            name,
            status,
            after,
            limit,
            ..
        } => {
            let request = ListFlowsRequest {
                name,
                status: status.unwrap_or_default().into(),
                after,
                limit,
                ..ListFlowsRequest::default()
            };
            let answer = client.list_flows(request).await.map_err(k())?.into_inner();
            if target.json {
                let flows: Vec<_> = answer.flows.iter().map(to_json).collect();
                println!("{}", serde_json::json!({ "flows": flows, "next": answer.next }));
            } else {
                for flow in &answer.flows {
                    println!("{}", summary(flow));
                }
                if !answer.next.is_empty() {
                    println!("(more after {})", answer.next);
                }
            }
        }
    }
    Ok(())
}

/// One line: id, flow, status and what it waits for or ended with.
fn summary(flow: &Flow) -> String {
    let json = to_json(flow);
    let state = match flow.status() {
        FlowStatus::Suspended if flow.awaiting.is_empty() => format!("suspended until {} ms", flow.wake_at_ms),
        FlowStatus::Suspended => format!("suspended awaiting {}", flow.awaiting.join(" or ")),
        FlowStatus::Done => format!("done {}", json["output"]),
        FlowStatus::Failed => format!("failed: {}", flow.error),
        status => status.label(),
    };
    format!("{}  {}  {state}", flow.id, flow.name)
}

fn print_flow(target: &Target, flow: &Flow) {
    if target.json {
        println!("{}", to_json(flow));
    } else {
        println!("{}", summary(flow));
        println!("  data  {}", to_json(flow)["data"]);
    }
}
