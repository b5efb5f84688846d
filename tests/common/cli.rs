//! The `keepsake` command line as the tests run it: the binary with the S3 test credentials,
//! client commands against a cluster, archive commands on its archive, restores, a crash point
//! armed in a command, and the JSON line a command prints.

use std::process::{Command, Stdio};

use super::cluster::Cluster;
use super::s3::S3_ENV;

/// Runs the `keepsake` binary with `args` (and the S3 test credentials); returns its exit code
/// and everything it printed.
pub fn keepsake_cli<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (i32, String) {
    let (status, text) = keepsake_cli_crashing_at(args, None);
    (status.code().unwrap_or(-1), text)
}

/// A client command against `cluster` (`--endpoints` of every node appended).
pub fn cluster_cli(cluster: &Cluster, args: &[&str]) -> (i32, String) {
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend(["--endpoints".into(), cluster.endpoints()]);
    keepsake_cli(&all)
}

/// An archive command on `cluster`'s archive (`--cluster-id` and the archive flags appended).
pub fn archive_cli(cluster: &Cluster, args: &[&str]) -> (i32, String) {
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend(["--cluster-id".into(), cluster.id().into()]);
    all.extend(cluster.archive_args());
    keepsake_cli(&all)
}

/// `keepsake backup verify` on `cluster`'s archive.
pub fn verify_cli(cluster: &Cluster) -> (i32, String) {
    archive_cli(cluster, &["backup", "verify"])
}

/// `keepsake_cli` with the crash point `crash_at` armed (see raft/src/crash.rs); returns the
/// exit status, so that a test can tell a crash from an exit.
pub fn keepsake_cli_crashing_at<S: AsRef<std::ffi::OsStr>>(
    args: &[S],
    crash_at: Option<&str>,
) -> (std::process::ExitStatus, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keepsake"));
    cmd.args(args)
        .envs(S3_ENV)
        .env_remove("KEEPSAKE_ENDPOINTS")
        .env_remove("KEEPSAKE_CRASH_AT")
        .env_remove("KEEPSAKE_STOP_AT")
        .env_remove("KEEPSAKE_CLOCK_OFFSET_MS")
        // The test clusters' CA and the operator's certificate.
        .env("KEEPSAKE_CERTS_DIR", super::tls::certs_dir())
        .env_remove("KEEPSAKE_INSECURE")
        .env_remove("KEEPSAKE_CA")
        .env_remove("KEEPSAKE_CERT")
        .env_remove("KEEPSAKE_KEY")
        .env_remove("KEEPSAKE_ARCHIVE_KEY_FILE")
        .env_remove("KEEPSAKE_ARCHIVE_KEY_COMMAND")
        .stdin(Stdio::null());
    if let Some(point) = crash_at {
        cmd.env("KEEPSAKE_CRASH_AT", point);
    }
    keepsake::cli::die_with_parent(&mut cmd);
    let out = cmd.output().expect("run the keepsake binary");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status, text)
}

/// The JSON object a command printed (its one line starting with `{`).
pub fn json_line(text: &str) -> serde_json::Value {
    let line = text.lines().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no JSON in: {text}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// Runs `keepsake restore` from `from`'s archive (local or S3) into node 1 of `to`, with
/// `extra` flags; returns its exit code and output.
pub fn restore_cli(from: &Cluster, to: &Cluster, extra: &[&str]) -> (i32, String) {
    keepsake_cli(&restore_args(from, to, extra))
}

/// The arguments `restore_cli` runs `keepsake` with.
pub fn restore_args(from: &Cluster, to: &Cluster, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["restore".to_owned(), "--cluster-id".into(), from.id().into()];
    args.extend(from.archive_args());
    args.extend(["--new-cluster-id".into(), to.id().into(), "--members".into(), to.members_flag()]);
    args.extend(["--data-dir".into(), to.data_dir(1).to_string_lossy().into_owned()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}
