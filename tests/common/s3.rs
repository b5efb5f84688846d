//! A real S3-compatible server for the tests: moto's server (installed by `ops/setup.sh` into
//! `target/tools/moto`, or the program `KEEPSAKE_S3_SERVER` names) on a free loopback port,
//! with one empty bucket. Pausing it (SIGSTOP) is an object-store outage; dropping it kills it,
//! also when a test panics.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::http::http_request;
use super::os::{lock, signal};
use super::ports::free_ports;

/// Credentials the server accepts (any will do); the nodes and the CLI get them as `AWS_*`.
pub const S3_ENV: [(&str, &str); 3] =
    [("AWS_ACCESS_KEY_ID", "keepsake-test"), ("AWS_SECRET_ACCESS_KEY", "keepsake-test"), ("AWS_REGION", "us-east-1")];

pub struct S3Server {
    child: Mutex<Option<Child>>,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    pub bucket: String,
    /// `127.0.0.1:PORT`, for a proxy in front of it.
    pub addr: String,
}

fn server_program() -> PathBuf {
    if let Some(p) = std::env::var_os("KEEPSAKE_S3_SERVER") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tools/moto/bin/moto_server")
}

impl S3Server {
    /// Starts the server and creates the bucket; panics (saying how to install it) when the
    /// server is missing.
    pub fn start() -> S3Server {
        let program = server_program();
        assert!(
            program.exists(),
            "the S3-compatible test server {} is missing: run `bash ops/setup.sh` (or set KEEPSAKE_S3_SERVER)",
            program.display()
        );
        let port = free_ports(1)[0];
        let addr = format!("127.0.0.1:{port}");
        let mut cmd = Command::new(&program);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        keepsake::cli::die_with_parent(&mut cmd);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let server = S3Server {
            child: Mutex::new(Some(child)),
            endpoint: format!("http://{addr}"),
            bucket: "keepsake-test".into(),
            addr,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match server.http("PUT", &format!("/{}", server.bucket)) {
                Ok(200) => return server,
                Ok(code) => panic!("creating the test bucket answered HTTP {code}"),
                Err(e) if Instant::now() > deadline => panic!("the S3 test server did not come up in 30 s: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Object-level requests go through `object_store`, as the nodes' do: this is only for
    /// bucket set-up.
    fn http(&self, method: &str, path: &str) -> std::io::Result<u16> {
        http_request(&self.addr, method, path).map(|(code, _)| code)
    }

    /// The archive URL of `prefix` in the bucket.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// SIGSTOP: the port stays open but nothing answers (a hung object store).
    pub fn pause(&self) {
        let pid = lock(&self.child).as_ref().expect("the S3 server runs").id();
        signal(pid as libc::pid_t, libc::SIGSTOP);
    }

    pub fn resume(&self) {
        let pid = lock(&self.child).as_ref().expect("the S3 server runs").id();
        signal(pid as libc::pid_t, libc::SIGCONT);
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(mut child) = lock(&self.child).take() {
            signal(child.id() as libc::pid_t, libc::SIGCONT);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
