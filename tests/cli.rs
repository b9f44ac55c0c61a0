//! The operator CLI against two real nodes: create actors, follow across nodes, publish, read
//! logs, look at deliveries; text for people and JSON for scripts.

mod support;

use std::process::Command;
use support::{Node, TestDir, eventually, free_addr};

/// Runs `fedsx <args>` against `node`; returns stdout, failing the test on a non-zero exit.
fn fedsx(node: &Node, args: &[&str]) -> String {
    let (status, stdout, stderr) = fedsx_status(node, args);
    assert!(status.success(), "fedsx {args:?} failed: {stderr}");
    stdout
}

fn fedsx_status(node: &Node, args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_fedsx"))
        .args(args)
        .env("FEDSX_KERNEL", node.kernel_url())
        .env("FEDSX_DELIVERY", node.delivery_url())
        .output()
        .unwrap();
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|err| panic!("{err}: {text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn operating_two_nodes_from_the_command_line() {
    let dir = TestDir::new();
    let a = Node::start("node-a", &dir.join("a"), free_addr(), "100ms", dir.path())
        .await
        .unwrap();
    let b = Node::start("node-b", &dir.join("b"), free_addr(), "100ms", dir.path())
        .await
        .unwrap();

    let created = fedsx(&a, &["actor", "create", "alice"]);
    assert!(
        created.contains(&format!("id          {}/actors/alice", a.url())),
        "{created}"
    );
    let bob = json(&fedsx(&b, &["actor", "create", "bob", "--json"]));
    let bob_url = bob["id"].as_str().unwrap().to_owned();

    let sent = fedsx(&a, &["follow", "alice", &bob_url]);
    assert!(
        sent.starts_with(&format!("alice sent a Follow to {bob_url}: outbox seq 1")),
        "{sent}"
    );
    // The follower is recorded, then the Accept published: wait for both.
    let shown = eventually("bob followed by alice, Accept published", || {
        let shown = json(&fedsx(&b, &["actor", "show", "bob", "--json"]));
        async move { (shown["followers"].as_array()?.len() == 1 && shown["outbox_tip"] == 1).then_some(shown) }
    })
    .await
    .unwrap();
    assert_eq!(
        (shown["inbox_tip"].as_u64(), shown["outbox_tip"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(
        shown["followers"][0].as_str(),
        Some(format!("{}/actors/alice", a.url()).as_str())
    );

    let published = fedsx(&b, &["publish", "bob", "--content", "hello from b"]);
    assert!(
        published.starts_with("bob published a note: outbox seq 2"),
        "{published}"
    );
    let inbox = eventually("the note in alice's inbox", || {
        let inbox = fedsx(&a, &["log", "alice", "inbox"]);
        async move { inbox.contains("hello from b").then_some(inbox) }
    })
    .await
    .unwrap();
    let lines: Vec<&str> = inbox.lines().collect();
    assert_eq!(lines.len(), 2, "{inbox}");
    assert!(
        lines[0].starts_with("#1") && lines[0].contains("Accept") && lines[0].contains(&bob_url),
        "{inbox}"
    );
    assert!(
        lines[1].starts_with("#2") && lines[1].contains("Create") && lines[1].contains("\"hello from b\""),
        "{inbox}"
    );
    let following = json(&fedsx(&a, &["actor", "show", "alice", "--json"]));
    assert_eq!(following["following"][0].as_str(), Some(bob_url.as_str()));
    let outbox_text = fedsx(&a, &["log", "alice", "outbox", "--json"]);
    let outbox = json(outbox_text.lines().next().unwrap());
    assert_eq!(outbox["activity"]["type"].as_str(), Some("Follow"));

    let deliveries = json(&fedsx(&b, &["deliveries", "--json"]));
    assert_eq!(
        deliveries[0]["peer"].as_str(),
        Some(a.url().as_str()),
        "one queue per destination node"
    );
    assert_eq!(deliveries[0]["dead_letters"].as_u64(), Some(0));
    assert_eq!(fedsx(&b, &["dead-letters"]).trim(), "no dead letters");
    assert!(fedsx(&b, &["deliveries"]).contains("pending"));

    let (status, _, stderr) = fedsx_status(&b, &["actor", "show", "nobody"]);
    assert_eq!(status.code(), Some(1));
    assert_eq!(
        stderr.trim(),
        format!("fedsx: kernel at {}: no actor nobody on this node", b.kernel_url())
    );
    let (status, _, stderr) = fedsx_status(&b, &["redrive", "https://x.example/actors/y"]);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("no queue for peer"), "{stderr}");
}
