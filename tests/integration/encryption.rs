//! The encrypted archive, with real processes and a real S3-compatible server: a reader without
//! the right key is refused and told which key it needs; a forged segment (a valid checksum and
//! digest, but sealed by no key of the ring) and a plaintext object slipped into the bucket are
//! refused and named; a new active key takes over while writes keep being archived; and a node
//! with keys never writes into a plaintext archive root.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keepsake::proto::v1::*;
use keepsake_archive::envelope::{self, Kind};
use keepsake_archive::keys::KeyRing;
use keepsake_archive::segment::Segment;

use crate::common::*;

const LEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Puts `n` ARCHIVED items and returns the last one's log index.
async fn archived_puts(cluster: &Cluster, user: &str, n: usize) -> u64 {
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let mut store = cluster.store(leader);
    let mut last = 0;
    for i in 0..n {
        let req = PutRequest {
            key: Some(key(user, "contacts", &format!("c{i}"))),
            value: format!("secret contact {i}").into_bytes(),
            durability: Durability::Archived as i32,
            ..Default::default()
        };
        last = bounded(store.put(request(req, Duration::from_secs(20)))).await.expect("an ARCHIVED put").log_index;
    }
    last
}

/// `keepsake restore` from `from`'s archive with the key ring in `key_file` (None: no keys).
fn restore_with(from: &Cluster, to: &Cluster, key_file: Option<&Path>) -> (i32, String) {
    let mut args = restore_args(from, to, &[]);
    if let Some(at) = args.iter().position(|a| a == "--key-file") {
        args.drain(at..at + 2);
    }
    if let Some(file) = key_file {
        args.extend(["--key-file".into(), file.display().to_string()]);
    }
    keepsake_cli(&args)
}

/// `keepsake backup verify` on `cluster`'s archive with the key ring in `key_file`.
fn verify_with(cluster: &Cluster, key_file: Option<&Path>) -> (i32, String) {
    let mut args = vec!["backup".to_owned(), "verify".into(), "--cluster-id".into(), cluster.id().into()];
    let archive = cluster.archive_args();
    let at = archive.iter().position(|a| a == "--key-file").unwrap_or(archive.len());
    args.extend(archive[..at].iter().cloned());
    if let Some(file) = key_file {
        args.extend(["--key-file".into(), file.display().to_string()]);
    }
    keepsake_cli(&args)
}

struct Keys {
    dir: tempfile::TempDir,
}

impl Keys {
    fn new() -> Keys {
        Keys { dir: tempfile::tempdir().expect("a directory for key files") }
    }

    fn file(&self, name: &str, ring: &str) -> PathBuf {
        write_key_file(&self.dir.path().join(name), ring)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_encrypted_archive_refuses_wrong_keys_forged_segments_and_plaintext_objects() {
    let s3 = S3Server::start();
    let keys = Keys::new();
    let ring = key_entry("k1");
    let key_file = keys.file("archive.keys", &ring);
    let cluster = Cluster::builder().archive_s3(&s3, "sealed").archive_key_file(&key_file).start().await;
    archived_puts(&cluster, "alice", 20).await;
    let (code, text) = verify_with(&cluster, Some(&key_file));
    assert_eq!(code, 0, "the archive verifies with its key: {text}");

    // Readers without the right key are refused, and told which key they need.
    let (code, text) = verify_with(&cluster, None);
    assert_ne!(code, 0, "verify without a key fails");
    assert!(text.contains("\"k1\"") && text.contains("no archive key"), "{text}");
    let impostor = keys.file("impostor.keys", &key_entry("k1"));
    let elsewhere = keys.file("elsewhere.keys", &key_entry("k9"));
    for (file, says) in [(&impostor, "does not open"), (&elsewhere, "does not hold")] {
        let target = Cluster::builder().nodes(1).cluster_id("never").no_bootstrap().prepare();
        let (code, text) = restore_with(&cluster, &target, Some(file));
        assert_ne!(code, 0, "a restore with the wrong key fails: {text}");
        assert!(text.contains("\"k1\"") && text.contains(says), "the failure names the key id: {text}");
        assert!(!target.data_dir(1).exists(), "a refused restore leaves no data directory");
    }

    // A forged segment: well formed in every way a plaintext archive checks (checksum, index
    // range, link, digest; here, the genuine segment's own content, which a plaintext restore
    // would apply), but sealed by no key of the ring: once in the clear, once with a key of the
    // same id that is not the ring's.
    let newest = cluster.segment_objects().await.last().expect("a segment").name.clone();
    let genuine = cluster.archive_object(&newest).await;
    let ring = KeyRing::parse(&ring, "test").expect("the ring");
    let (forged, _) = envelope::open(&ring, Some(Kind::Segment), &newest, &genuine).expect("the segment opens");
    Segment::decode(&newest, &forged).expect("the forgery is a well-formed segment");
    let forger = KeyRing::parse(&key_entry("k1"), "forger").expect("the forger's ring");
    let name = newest.rsplit('/').next().expect("a name").to_owned();
    for (bytes, says) in [
        (forged.clone(), "a plaintext object"),
        (envelope::seal(forger.active(), Kind::Segment, &forged), "does not open"),
    ] {
        cluster.put_archive_object(&newest, bytes).await;
        let target = Cluster::builder().nodes(1).cluster_id("never").no_bootstrap().prepare();
        let (code, text) = restore_with(&cluster, &target, Some(&key_file));
        assert_ne!(code, 0, "a restore over a forged segment fails: {text}");
        assert!(text.contains(&name) && text.contains(says), "the failure names the forged segment: {text}");
        assert!(!target.data_dir(1).exists());
        let (code, text) = verify_with(&cluster, Some(&key_file));
        assert_ne!(code, 0, "verify finds the forged segment: {text}");
        assert!(text.contains(&name) && text.contains(says), "{text}");
    }
    cluster.put_archive_object(&newest, genuine).await;
    assert_eq!(verify_with(&cluster, Some(&key_file)).0, 0, "the genuine segment is back");

    // A plaintext object slipped in anywhere under the root is named by verify, whatever its
    // name looks like.
    let root = cluster.open_archive().root;
    for name in ["leases/slipped-in.lease", "leases/00000000000000000001-00000000000000000002.seg"] {
        let slipped = format!("{root}/{name}");
        cluster.put_archive_object(&slipped, br#"{"holder":"x","expires_us":0}"#.to_vec()).await;
        let (code, text) = verify_with(&cluster, Some(&key_file));
        assert_ne!(code, 0, "verify fails on a plaintext object: {text}");
        assert!(text.contains(name) && text.contains("plaintext"), "{text}");
        cluster.delete_archive_object(&slipped).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_active_key_takes_over_without_stopping_uploads_and_old_keys_still_open() {
    let s3 = S3Server::start();
    let keys = Keys::new();
    let (k1, k2) = (key_entry("k1"), key_entry("k2"));
    let key_file = keys.file("archive.keys", &k1);
    let cluster = Cluster::builder().archive_s3(&s3, "rotate").archive_key_file(&key_file).start().await;
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let (stop, acked, failed) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)), Arc::default());
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let mut store = cluster.store(leader);
            let (stop, acked, failed): (_, _, Arc<AtomicUsize>) = (stop.clone(), acked.clone(), Arc::clone(&failed));
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let req = PutRequest {
                        key: Some(key("rot", "notes", &format!("w{w}-{i}"))),
                        value: b"note".to_vec(),
                        durability: Durability::Archived as i32,
                        ..Default::default()
                    };
                    match bounded(store.put(request(req, Duration::from_secs(10)))).await {
                        Ok(_) => acked.fetch_add(1, Ordering::SeqCst),
                        Err(_) => failed.fetch_add(1, Ordering::SeqCst),
                    };
                    i += 1;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = acked.load(Ordering::SeqCst);
    // The rotation: the new key joins the ring as the active one; the node re-reads the file.
    write_key_file(&key_file, &format!("{k1}\n{k2}:active"));
    let sealed_with = |cluster: &Cluster| {
        let archive = cluster.open_archive();
        async move {
            let newest = keepsake_archive::verify::list(&archive).await.expect("list").last().cloned()?;
            let bytes = {
                use object_store::ObjectStoreExt;
                let path = object_store::path::Path::from(newest.name.as_str());
                archive.store.get(&path).await.ok()?.bytes().await.ok()?
            };
            archive.keys.open(Kind::Segment, &newest.name, &bytes).ok()?.key_id
        }
    };
    let took_over = eventually(Duration::from_secs(15), || async {
        (sealed_with(&cluster).await.as_deref() == Some("k2")).then_some(())
    })
    .await;
    assert!(took_over.is_some(), "new segments are sealed with k2 within 15 s of the rotation");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.expect("a writer");
    }
    let (acked, failed) = (acked.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    println!("ARCHIVED writes: {before} before the rotation, {acked} in all, {failed} failed");
    assert_eq!(failed, 0, "no ARCHIVED write failed across the rotation");
    assert!(acked > before, "writes went on being archived after the rotation");
    let (code, text) = cluster_cli(&cluster, &["backup", "snapshot", "--timeout", "60s"]);
    assert_eq!(code, 0, "an archive snapshot under the new key: {text}");
    let (code, text) = verify_with(&cluster, Some(&key_file));
    assert_eq!(code, 0, "the ring of both keys opens every object: {text}");

    // Both keys restore everything; the new key alone cannot open what the old one sealed.
    let only_new = keys.file("only-new.keys", &k2);
    let target = Cluster::builder().nodes(1).cluster_id("never").no_bootstrap().prepare();
    let (code, text) = restore_with(&cluster, &target, Some(&only_new));
    assert_ne!(code, 0, "{text}");
    assert!(text.contains("\"k1\""), "the failure names the old key: {text}");
    let target = Cluster::builder().nodes(1).cluster_id("rotated").no_bootstrap().prepare();
    let (code, text) = restore_with(&cluster, &target, Some(&key_file));
    assert_eq!(code, 0, "{text}");
    assert!(text.contains(&format!("restored {} items", acked as u64 + SYSTEM_ITEMS)), "{text}");
}

/// Restarts every (stopped) node and returns why the new leader refuses to archive, once it
/// says (panics with `expected` if it does not within 15 s).
async fn restart_and_refuse(cluster: &Cluster, expected: &str) -> String {
    for id in cluster.ids() {
        cluster.restart(id);
    }
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    eventually(Duration::from_secs(15), || async {
        let s = cluster.backup_status(leader).await;
        (!s.refused.is_empty()).then_some(s.refused)
    })
    .await
    .expect(expected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_given_keys_refuses_to_archive_into_a_plaintext_root() {
    let s3 = S3Server::start();
    let keys = Keys::new();
    let cluster = Cluster::builder().archive_s3(&s3, "plain").start().await;
    archived_puts(&cluster, "bob", 3).await;
    let key_file = keys.file("archive.keys", &key_entry("k1"));
    for id in cluster.ids() {
        cluster.stop(id).await;
        cluster.add_archive_option(id, "key_file", &format!("{:?}", key_file.display().to_string()));
    }
    let refused = restart_and_refuse(&cluster, "the leader refuses the plaintext root").await;
    assert!(refused.contains("not encrypted") && refused.contains("new, empty root"), "{refused}");
    // With no archive-info.json or head to say so, the root's segments say it is plaintext.
    for id in cluster.ids() {
        cluster.stop(id).await;
    }
    let root = cluster.open_archive().root;
    cluster.delete_archive_object(&format!("{root}/archive-info.json")).await;
    cluster.delete_archive_object(&format!("{root}/head")).await;
    let refused =
        restart_and_refuse(&cluster, "the leader refuses the plaintext root without its archive-info.json").await;
    assert!(refused.contains(".seg is plaintext") && refused.contains("new, empty root"), "{refused}");
    let info = format!("{}/archive-info.json", cluster.open_archive().root);
    let listed = {
        use futures::TryStreamExt;
        let archive = cluster.open_archive();
        archive.store.list(Some(&archive.root)).try_collect::<Vec<_>>().await.expect("list")
    };
    assert!(listed.iter().all(|o| o.location.as_ref() != info), "no sealed archive-info.json was claimed");
    let segments = cluster.segment_objects().await;
    assert!(!segments.is_empty());
    for s in segments {
        assert!(!envelope::is_sealed(&cluster.archive_object(&s.name).await), "{} was sealed into the root", s.name);
    }
}

#[test]
fn archive_key_commands_add_and_activate_keys_and_never_print_one() {
    use std::os::unix::fs::PermissionsExt;
    let keys = Keys::new();
    let file = keys.dir.path().join("archive.keys");
    let file_arg = file.display().to_string();
    let printed = std::cell::RefCell::new(String::new());
    let cli = |args: &[&str]| {
        let (code, text) = keepsake_cli(&[&["archive-key"][..], args, &["--file", &file_arg]].concat());
        printed.borrow_mut().push_str(&text);
        (code, text)
    };
    let (code, text) = cli(&["create", "--id", "2026-12"]);
    assert_eq!(code, 0, "{text}");
    let (code, text) = cli(&["create", "--id", "2027-01"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("\"2026-12\" seals new objects"), "a later key waits to be activated: {text}");
    let (code, text) = cli(&["create", "--id", "2027-01"]);
    assert_ne!(code, 0, "an id is there once: {text}");
    let (code, text) = cli(&["activate", "--id", "2027-01"]);
    assert_eq!(code, 0, "{text}");
    let ring = keepsake_archive::keys::KeySource::File(file.clone()).load().expect("the file loads");
    assert_eq!((ring.active().id(), ring.ids().len()), ("2027-01", 2));
    let mode = std::fs::metadata(&file).expect("the file").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the key file is its owner's alone");
    let written = std::fs::read_to_string(&file).expect("the file");
    for secret in written.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split(':').nth(1)) {
        assert!(!printed.borrow().contains(secret), "a key was printed");
    }
    let (code, text) = cli(&["activate", "--id", "2028-01"]);
    assert_ne!(code, 0);
    assert!(text.contains("holds no key \"2028-01\""), "{text}");
}
