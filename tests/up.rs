//! `fedsx up` as a supervisor: when one of its four services dies, it says which and how,
//! stops the others and exits 1.

mod support;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::{Node, TestDir, free_addr};

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_child_stops_the_node_and_is_named() {
    let dir = TestDir::new();
    let mut node = Node::start("node", &dir.join("node"), free_addr(), "1s", dir.path())
        .await
        .unwrap();
    let children = node.children();
    let mut names: Vec<&str> = children.iter().map(|(name, _)| name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["delivery", "gateway", "kernel", "log-store"]);

    let kernel = children.iter().find(|(name, _)| name == "kernel").unwrap().1;
    kill(Pid::from_raw(kernel as i32), Signal::SIGKILL).unwrap();
    let status = node.wait().await.unwrap();
    assert_eq!(status.code(), Some(1));
    let log = node.log_tail();
    assert!(log.contains("fedsx up: kernel exited (signal: 9 (SIGKILL))"), "{log}");
    assert!(log.lines().last().unwrap().starts_with("fedsx: kernel exited"), "{log}");
    for (name, pid) in children {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid),
            "{name} still runs"
        );
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| stat.split_whitespace().nth(2) == Some("Z"))
}

/// kill -9 of `up` leaves no service running, and the next `up` on the same ports starts.
#[tokio::test(flavor = "multi_thread")]
async fn killing_up_stops_its_children_and_frees_its_ports() {
    let dir = TestDir::new();
    let http = free_addr();
    let mut node = Node::start("first", &dir.join("node"), http, "1s", dir.path())
        .await
        .unwrap();
    let children = node.children();
    assert_eq!(children.len(), 4, "{children:?}");
    node.sigkill().unwrap();
    support::eventually("up's children to stop after its kill -9", || {
        let children = children.clone();
        async move {
            let running = children
                .iter()
                .any(|(_, pid)| std::path::Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(*pid));
            (!running).then_some(())
        }
    })
    .await
    .unwrap();

    let mut again = Node::start("second", &dir.join("node"), http, "1s", dir.path())
        .await
        .unwrap();
    assert!(again.stop().await.unwrap().success());
}

/// A port held by someone else: `up` names the flag, the port and the process, and starts
/// nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_taken_port_is_named_with_its_holder() {
    let dir = TestDir::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (status, output) = support::run_to_exit(&[
        "up",
        "--data-dir",
        dir.join("node").to_str().unwrap(),
        "--http-listen",
        "127.0.0.1:0",
        "--log-store-listen",
        &addr.to_string(),
    ])
    .unwrap();
    assert_eq!(status.code(), Some(1), "{output}");
    let me = format!(
        "--log-store-listen {addr}: cannot listen: Address already in use (os error 98); port {} is held by pid {} (",
        addr.port(),
        std::process::id()
    );
    assert!(output.contains(&me), "{output}");
    assert!(!output.contains("fedsx-listening"), "{output}");
}
