//! SRE operations and the CLI contract, against real `keepsake serve` processes: leader
//! transfer (also to a node whose clock is behind), a learner joining and being promoted,
//! removing a node, and the `keepsake` client commands with their output and exit codes.

use std::process::Command;
use std::time::Duration;

use keepsake::proto::v1::*;

use crate::common::*;

const LEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A protobuf timestamp in microseconds.
fn micros(t: Option<prost_types::Timestamp>) -> i64 {
    let t = t.expect("a timestamp");
    t.seconds * 1_000_000 + i64::from(t.nanos) / 1000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs the failpoints feature: ops/test.sh turns it on")]
async fn updated_at_never_steps_back_when_a_leader_with_a_slow_clock_takes_over() {
    // Node 3's clock runs ten minutes behind the others'.
    let cluster = Cluster::builder().clock_offset(3, -600_000).start().await;
    cluster.make_leader(1).await;
    let before = put(&mut cluster.store(1), "skew", "notes", "a", "before").await.expect("put on node 1");
    cluster.make_leader(3).await;
    let after = put(&mut cluster.store(3), "skew", "notes", "b", "after").await.expect("put on node 3");
    assert_eq!(cluster.leader_id().await, Some(3), "node 3 stamped the write: it still leads");
    // Node 3's clock is behind: it stamps exactly the newest stamp in its log.
    let (t0, t1) = (micros(before.updated_at), micros(after.updated_at));
    assert_eq!(t1, t0, "updated_at moved {} s at the leader change", (t1 - t0) as f64 / 1e6);
    // The stamp holds for the stored item, and for writes after the first one in the term.
    let again = put(&mut cluster.store(3), "skew", "notes", "c", "later").await.expect("put on node 3");
    assert!(micros(again.updated_at) >= t1);
    let item = get(&mut cluster.store(3), "skew", "notes", "b").await.expect("the item");
    assert_eq!(micros(item.updated_at), t1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transfer_leader_hands_leadership_to_the_chosen_voter() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let target = cluster.ids().into_iter().find(|id| *id != leader).expect("a follower");
    put(&mut cluster.store(leader), "u", "c", "before", "1").await.expect("write before the transfer");

    // Asked through a follower that is not the target: it passes the request to the leader.
    let via = cluster.ids().into_iter().find(|id| *id != leader && *id != target).expect("a third node");
    let resp = within(Duration::from_secs(15), async {
        cluster
            .admin(via)
            .transfer_leader(request(TransferLeaderRequest { to_node_id: target }, Duration::from_secs(10)))
            .await
    })
    .await
    .expect("transfer-leader succeeds")
    .into_inner();
    assert_eq!(resp.leader_id, target, "the chosen voter became leader");
    assert_eq!(cluster.wait_for_leader(LEADER_TIMEOUT).await, target);

    // Writes and reads go on, and nothing written before was lost.
    put(&mut cluster.store(leader), "u", "c", "after", "2").await.expect("write after the transfer");
    assert_eq!(get(&mut cluster.store(target), "u", "c", "before").await.expect("read").value, b"1");

    let refused = cluster
        .admin(target)
        .transfer_leader(request(TransferLeaderRequest { to_node_id: 99 }, Duration::from_secs(5)))
        .await
        .expect_err("an unknown node cannot become leader");
    assert_eq!(refused.code(), tonic::Code::NotFound, "{}", refused.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_learner_joins_catches_up_is_promoted_and_a_node_is_removed() {
    let cluster = Cluster::builder().spares(1).start().await;
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    write_some(&cluster, leader, 50).await;

    cluster.restart(4); // start the spare: empty data dir, no initial members
    let added = within(Duration::from_secs(20), async {
        cluster
            .admin(leader)
            .add_learner(request(
                AddLearnerRequest { node_id: 4, client_addr: cluster.client_addr(4), peer_addr: cluster.peer_addr(4) },
                Duration::from_secs(15),
            ))
            .await
    })
    .await
    .expect("add-learner succeeds")
    .into_inner();
    let learner = added.members.iter().find(|m| m.node_id == 4).expect("node 4 is a member");
    assert!(!learner.voter, "node 4 joins as a learner");
    let s4 = cluster.wait_for_applied(4, added.log_index, Duration::from_secs(10)).await;
    assert_eq!(s4.role, "learner");
    let item =
        get_with(&mut cluster.store(4), "u", "c", &item_id(7), Consistency::Stale).await.expect("learner has data");
    assert_eq!(item.value, value_of("u", "c", 7));

    let promoted = cluster
        .admin(leader)
        .change_membership(request(ChangeMembershipRequest { voters: vec![1, 2, 3, 4] }, Duration::from_secs(10)))
        .await
        .expect("promote node 4")
        .into_inner();
    assert_eq!(promoted.members.iter().filter(|m| m.voter).count(), 4);

    let victim = cluster.ids().into_iter().find(|id| *id != leader && *id != 4).expect("a follower to remove");
    let removed = cluster
        .admin(leader)
        .remove_node(request(RemoveNodeRequest { node_id: victim }, Duration::from_secs(10)))
        .await
        .expect("remove a follower")
        .into_inner();
    assert!(removed.members.iter().all(|m| m.node_id != victim), "node {victim} is gone from the membership");
    assert_eq!(removed.members.len(), 3);

    // The remaining three still commit writes.
    cluster.kill(victim);
    put(&mut cluster.store(4), "u", "c", "after-removal", "x").await.expect("write with the new membership");
}

async fn write_some(cluster: &Cluster, node: u64, n: usize) {
    let mut store = cluster.store(node);
    for i in 0..n {
        put(&mut store, "u", "c", &item_id(i), value_of("u", "c", i)).await.expect("write");
    }
}

/// Runs `keepsake serve` with the config `config(dir)` writes for a fresh directory; returns
/// its exit code, what it printed on standard error, and whether it created its data directory.
fn serve_once(config: impl FnOnce(&std::path::Path) -> String) -> (Option<i32>, String, bool) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("node.toml");
    std::fs::write(&path, config(dir.path())).expect("write node.toml");
    let data = dir.path().join("data");
    let out = Command::new(env!("CARGO_BIN_EXE_keepsake"))
        .args(["serve", "--config"])
        .arg(&path)
        .arg("--data-dir")
        .arg(&data)
        .args(["--client-addr", "127.0.0.1:1", "--peer-addr", "127.0.0.1:1", "--http-addr", ""])
        .env_remove("KEEPSAKE_CONFIG")
        .env_remove("KEEPSAKE_INSECURE")
        .output()
        .expect("run keepsake serve");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned(), data.exists())
}

#[test]
fn serve_refuses_to_start_without_an_archive_url() {
    let (code, err, wrote) = serve_once(|_| "node_id = 1\n[archive]\nurl = \"\"\n".into());
    assert_ne!(code, Some(0), "serve without an archive must not run: {err}");
    assert!(err.contains("archive.url is empty"), "the error names the setting: {err}");
    assert!(!wrote, "nothing is written before the refusal");
}

#[test]
fn serve_refuses_to_start_without_tls_unless_plaintext_is_chosen() {
    let (code, err, wrote) =
        serve_once(|dir| format!("node_id = 1\n[archive]\nurl = {:?}\n", dir.join("archive").display().to_string()));
    assert_ne!(code, Some(0), "serve without TLS must not run: {err}");
    assert!(err.contains("TLS is not configured") && err.contains("--insecure"), "the error says what to do: {err}");
    assert!(!wrote, "nothing is written before the refusal");
}

#[test]
fn serve_refuses_to_start_when_its_archive_keys_are_unavailable() {
    use std::os::unix::fs::PermissionsExt;
    let config = |dir: &std::path::Path, keys: &str| {
        let archive = dir.join("archive").display().to_string();
        format!("node_id = 1\n[tls]\ninsecure = true\n[archive]\nurl = {archive:?}\n{keys}\n")
    };
    let (code, err, wrote) = serve_once(|dir| config(dir, &format!("key_file = {:?}", dir.join("absent.keys"))));
    assert_ne!(code, Some(0), "serve without its key file must not run: {err}");
    assert!(err.contains("keys are unavailable") && err.contains("absent.keys"), "the error names the file: {err}");
    assert!(!wrote, "nothing is written before the refusal");

    let (code, err, wrote) = serve_once(|dir| {
        let path = dir.join("open.keys");
        std::fs::write(&path, key_entry("k1")).expect("write a key file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        config(dir, &format!("key_file = {path:?}"))
    });
    assert_ne!(code, Some(0), "serve with a key file anyone can read must not run: {err}");
    assert!(err.contains("chmod 600"), "the error says what to do: {err}");
    assert!(!wrote);

    let (code, err, wrote) = serve_once(|dir| config(dir, "key_env = \"KEEPSAKE_TEST_NO_SUCH_VARIABLE\""));
    assert_ne!(code, Some(0), "serve without its key variable must not run: {err}");
    assert!(err.contains("KEEPSAKE_TEST_NO_SUCH_VARIABLE"), "{err}");
    assert!(!wrote);

    let (code, err, _) = serve_once(|dir| config(dir, "key_env = \"A\"\nkey_command = \"echo\""));
    assert_ne!(code, Some(0));
    assert!(err.contains("one way only"), "{err}");
}

/// Runs the `keepsake` binary against the cluster; returns (exit code, stdout, stderr).
fn keepsake(cluster: &Cluster, args: &[&str]) -> (i32, String, String) {
    let endpoints = cluster.endpoints();
    let out = Command::new(env!("CARGO_BIN_EXE_keepsake"))
        .args(args)
        .env("KEEPSAKE_ENDPOINTS", endpoints)
        .env("KEEPSAKE_CERTS_DIR", crate::common::certs_dir())
        .output()
        .expect("run the keepsake binary");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_commands_print_results_and_exit_with_documented_codes() {
    let cluster = Cluster::start(3).await;
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let key = ["--user", "u1", "--collection", "contacts", "--id", "alice"];
    let cli = |extra: &[&str]| keepsake(&cluster, extra);

    let (code, out, err) = cli(&[&["put"][..], &key, &["--value", "alice@example.com"]].concat());
    assert_eq!(code, 0, "put: {err}");
    assert!(out.starts_with("revision "), "put prints the revision: {out}");
    // An ARCHIVED put is acknowledged once the archive holds it.
    let archived_key = ["--user", "u1", "--collection", "notes", "--id", "archived"];
    let args = [&["put"][..], &archived_key, &["--value", "kept", "--durability", "archived", "--output", "json"]];
    let (code, out, err) = cli(&args.concat());
    assert_eq!(code, 0, "put --durability archived: {err}");
    let put: serde_json::Value = serde_json::from_str(&out).expect("put --output json prints JSON");
    let index = put["log_index"].as_u64().expect("a log index");
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let archived = cluster.backup_status(leader).await.archived_index.unwrap_or(0);
    assert!(archived >= index, "acknowledged at index {index}, but the archive holds only up to {archived}");

    let (code, out, err) = cli(&[&["get"][..], &key].concat());
    assert_eq!((code, out.as_str()), (0, "alice@example.com\n"), "get: {err}");

    let (code, out, _) = cli(&[&["get"][..], &key, &["--output", "json"]].concat());
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("get --output json prints JSON");
    assert_eq!(v["value"], "alice@example.com");
    let revision = v["revision"].as_u64().expect("a revision");

    let stale = (revision + 5).to_string();
    let (code, _, err) = cli(&[&["put"][..], &key, &["--value", "x", "--if-revision", &stale]].concat());
    assert_eq!(code, 4, "a failed precondition exits 4: {err}");
    assert!(err.contains(&format!("current revision {revision}")), "the message names the current revision: {err}");

    let (code, _, err) = cli(&["get", "--user", "u1", "--collection", "contacts", "--id", "nobody"]);
    assert_eq!(code, 3, "not found exits 3: {err}");

    let (code, _, err) = cli(&["get", "--user", "", "--collection", "contacts", "--id", "x"]);
    assert_eq!(code, 2, "an invalid argument exits 2: {err}");
    assert!(err.contains("user_id is empty"), "{err}");

    let (code, out, err) = cli(&["list", "--user", "u1", "--collection", "contacts", "--output", "json"]);
    assert_eq!(code, 0, "list: {err}");
    let items: serde_json::Value = serde_json::from_str(&out).expect("list prints a JSON array");
    assert_eq!(items.as_array().map(Vec::len), Some(1));

    let (code, out, err) = cli(&["cluster", "status", "--output", "json"]);
    assert_eq!(code, 0, "cluster status: {err}");
    let status: serde_json::Value = serde_json::from_str(&out).expect("status prints JSON");
    assert_eq!(status["nodes"].as_array().map(Vec::len), Some(3));
    assert!(status["leader_id"].as_u64().is_some());

    let (code, _, err) = cli(&[&["delete"][..], &key].concat());
    assert_eq!(code, 0, "delete: {err}");
    let (code, out, _) = cli(&["changes", "--user", "u1", "--output", "json"]);
    assert_eq!(code, 0);
    assert!(out.contains("\"deleted\":true"), "the delete shows as a tombstone: {out}");

    // The test cluster archives to a local directory: `backup status` says it is not off-box.
    let (code, out, err) = cli(&["backup", "status"]);
    assert_eq!(code, 0, "backup status: {err}");
    assert!(out.contains("ARCHIVED writes are not off this box"), "{out}");
    let (_, out, _) = cli(&["backup", "status", "--output", "json"]);
    let status: serde_json::Value = serde_json::from_str(&out).expect("backup status prints JSON");
    assert_eq!(status["local_directory"], true, "{out}");

    // No node reachable: exit 5 with a message that says what to check.
    let out = Command::new(env!("CARGO_BIN_EXE_keepsake"))
        .args(["get", "--user", "u", "--collection", "c", "--id", "i", "--endpoints", "127.0.0.1:1", "--timeout", "1s"])
        .env("KEEPSAKE_CERTS_DIR", crate::common::certs_dir())
        .output()
        .expect("run keepsake");
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("keepsake cluster status"));
}
