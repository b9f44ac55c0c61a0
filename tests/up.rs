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
