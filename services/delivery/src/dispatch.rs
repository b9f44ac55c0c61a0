//! One send: POST the envelope (or the ActivityPub post, signed now) to the peer's inbox and classify the answer. 2xx delivered;
//! 408, 429, 5xx and transport errors are worth retrying (429 and 503 with the peer's
//! Retry-After, in seconds or as an HTTP date); any other 4xx is a permanent refusal.

use crate::queue::Failure;
use crate::sign::Signer;
use bytes::Bytes;
use fedsx_runtime::http_client::PeerHttp;
use std::sync::Arc;
use std::time::Duration;

/// Bytes of a peer's answer body read (and ignored) at most.
const MAX_ANSWER_BYTES: usize = 16 * 1024;

/// POSTs an envelope to a peer's inbox. Run it inside the send's client span
/// (`http_client_span`): the request carries that span as its `traceparent`, and the span
/// gets the answer's status.
pub async fn dispatch(http: &PeerHttp, signer: &Arc<Signer>, inbox_url: &str, envelope: &Bytes) -> Result<(), Failure> {
    if inbox_url.is_empty() {
        return Err(Failure::Transient {
            reason: "no peer url".into(),
            retry_after: None,
        });
    }
    let prepared = signer.prepare_off_thread(inbox_url, envelope).await?;
    let mut request = http::Request::post(inbox_url);
    for (name, value) in prepared.headers {
        request = request.header(name, value);
    }
    if let Some(traceparent) = fedsx_runtime::trace_context::current_traceparent() {
        request = request.header("traceparent", traceparent);
    }
    let request = request.body(prepared.body).map_err(|err| Failure::Permanent {
        reason: format!("bad inbox url {inbox_url:?}: {err}"),
    })?;
    let reply = http.send(request, MAX_ANSWER_BYTES).await.map_err(|err| {
        tracing::Span::current().record("otel.status_code", "ERROR");
        Failure::Transient {
            reason: err.to_string(),
            retry_after: None,
        }
    })?;
    let span = tracing::Span::current();
    span.record("http.response.status_code", reply.status.as_u16());
    if !reply.status.is_success() {
        span.record("otel.status_code", "ERROR");
    }
    classify(reply.status, &reply.headers)
}

/// What an HTTP answer means for the activity.
pub fn classify(status: http::StatusCode, headers: &http::HeaderMap) -> Result<(), Failure> {
    classify_at(status, headers, std::time::SystemTime::now())
}

/// A Retry-After value: delta-seconds, or an HTTP date (a wait from `now`, none if past).
fn retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn classify_at(status: http::StatusCode, headers: &http::HeaderMap, now: std::time::SystemTime) -> Result<(), Failure> {
    let reason = format!("status {}", status.as_u16());
    if status.is_success() {
        return Ok(());
    }
    let code = status.as_u16();
    if code == 429 || code == 503 {
        let retry_after = headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry_after(v, now));
        return Err(Failure::Transient { reason, retry_after });
    }
    if status.is_client_error() && code != 408 {
        return Err(Failure::Permanent { reason });
    }
    Err(Failure::Transient {
        reason,
        retry_after: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> Result<(), Failure> {
        classify(http::StatusCode::from_u16(code).unwrap(), &http::HeaderMap::new())
    }

    #[test]
    fn answers_are_classified_as_the_design_says() {
        assert_eq!(status(200), Ok(()));
        assert_eq!(status(202), Ok(()));
        assert!(matches!(status(410), Err(Failure::Permanent { reason }) if reason == "status 410"));
        assert!(matches!(status(400), Err(Failure::Permanent { .. })));
        assert!(matches!(status(408), Err(Failure::Transient { .. })));
        assert!(matches!(status(500), Err(Failure::Transient { reason, .. }) if reason == "status 500"));
        assert!(
            matches!(status(302), Err(Failure::Transient { .. })),
            "a redirect is not followed"
        );
    }

    #[test]
    fn retry_after_may_be_an_http_date() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2026 07:28:00 GMT").unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::RETRY_AFTER,
            "Wed, 21 Oct 2026 07:30:00 GMT".parse().unwrap(),
        );
        let answer = classify_at(http::StatusCode::SERVICE_UNAVAILABLE, &headers, now);
        assert_eq!(
            answer,
            Err(Failure::Transient {
                reason: "status 503".into(),
                retry_after: Some(Duration::from_secs(120))
            })
        );
        headers.insert(
            http::header::RETRY_AFTER,
            "Wed, 21 Oct 2026 07:00:00 GMT".parse().unwrap(),
        );
        let answer = classify_at(http::StatusCode::SERVICE_UNAVAILABLE, &headers, now);
        assert!(
            matches!(answer, Err(Failure::Transient { retry_after: Some(d), .. }) if d.is_zero()),
            "a past date: no extra wait"
        );
        headers.insert(http::header::RETRY_AFTER, "soon".parse().unwrap());
        let answer = classify_at(http::StatusCode::SERVICE_UNAVAILABLE, &headers, now);
        assert!(
            matches!(answer, Err(Failure::Transient { retry_after: None, .. })),
            "unreadable: the schedule decides"
        );
    }

    #[test]
    fn retry_after_is_read_on_429_and_503() {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, "120".parse().unwrap());
        let answer = classify(http::StatusCode::TOO_MANY_REQUESTS, &headers);
        assert_eq!(
            answer,
            Err(Failure::Transient {
                reason: "status 429".into(),
                retry_after: Some(Duration::from_secs(120))
            })
        );
        let answer = classify(http::StatusCode::SERVICE_UNAVAILABLE, &headers);
        assert!(matches!(
            answer,
            Err(Failure::Transient {
                retry_after: Some(_),
                ..
            })
        ));
    }
}
