//! The kernel reads time through its clock port: a flow's timer fires when the clock the
//! kernel was given reaches it — not before, however long it waits in real time.

mod support;

use fedsx_kernel::clock::{Clock, ManualClock};
use fedsx_proto::kernel::v1::FlowStatus;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_timer_fires_when_the_kernels_clock_reaches_it() {
    let dir = tempfile::tempdir().unwrap();
    let shutdown = fedsx_runtime::CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let logs_url = log_store(dir.path(), shutdown.clone()).await;
    let clock = Arc::new(ManualClock::starting_at(1_700_000_000_000));
    let (kernel, _) = kernel_timed(&logs_url, &shutdown, Default::default(), clock.clone()).await;

    let hour = 3_600_000;
    let flow = kernel
        .start_flow("wait-timer", &format!(r#"{{"ms": {hour}}}"#))
        .await
        .unwrap();
    let due = 1_700_000_000_000 + hour;
    assert_eq!(flow.status(), FlowStatus::Suspended);
    assert_eq!(flow.wake_at_ms, due, "due an hour from the kernel's now");

    clock.advance(Duration::from_millis(hour as u64 - 1));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        kernel.flow(&flow.id).unwrap().status(),
        FlowStatus::Suspended,
        "a millisecond early, it still sleeps"
    );

    clock.advance(Duration::from_millis(1));
    let mut done = None;
    for _ in 0..200 {
        let now = kernel.flow(&flow.id).unwrap();
        if now.status() == FlowStatus::Done {
            done = Some(now);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let done = done.expect("the flow completes once the clock reaches its time");
    let output: Value = serde_json::from_str(&done.output).unwrap();
    assert_eq!(output["due_ms"], due);
    assert_eq!(output["late_ms"], 0, "woken at the clock's time, which stood still");
    assert_eq!(done.updated_ms, clock.now_ms());
}
