//! `keepsake bench --start-cluster`: three real `keepsake serve` processes on loopback, in a
//! scratch directory, so the benchmark can report each node's CPU time and peak memory. The
//! processes are stopped when the cluster is dropped, and die with the benchmark if it is killed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use crate::cli::client::node_status;
use crate::cli::die_with_parent;

pub struct LocalCluster {
    pub dir: PathBuf,
    /// The throwaway CA and certificates, when it serves TLS.
    certs: Option<PathBuf>,
    /// Client addresses, node 1 first.
    pub client_addrs: Vec<String>,
    children: Vec<Child>,
    keep_dir: bool,
}

impl LocalCluster {
    /// Starts nodes 1–3 with client ports `base_port`…+2, peer ports +100, HTTP ports +200. A
    /// `base_config` supplies everything else (the archive above all); without one the nodes
    /// share an archive directory under `dir`.
    pub async fn start(
        dir: &Path,
        base_port: u16,
        base_config: Option<&Path>,
        keep_dir: bool,
        tls: bool,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let base = match base_config {
            Some(p) => std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?,
            None => format!("[archive]\nurl = {:?}\n", dir.join("archive").display().to_string()),
        };
        if base.lines().any(|l| l.trim() == "[tls]") {
            anyhow::bail!("the node config has a [tls] table: the benchmark sets TLS itself (--tls, or plaintext)");
        }
        let certs = tls.then(|| dir.join("tls"));
        if let Some(certs) = &certs {
            crate::tls::certs::create_local(certs, "keepsake bench CA (throwaway)", &[1, 2, 3])
                .map_err(anyhow::Error::msg)?;
        }
        let client = |i: u16| format!("127.0.0.1:{}", base_port + i);
        let peer = |i: u16| format!("127.0.0.1:{}", base_port + 100 + i);
        let members: Vec<String> = (0..3).map(|i| format!("{}={}/{}", i + 1, client(i), peer(i))).collect();
        let exe = std::env::current_exe().context("find the keepsake executable")?;
        // Each run is its own cluster, so runs sharing an archive (one bucket) do not share a
        // history: the archive keeps each cluster's objects under its id.
        let cluster_id =
            format!("keepsake-bench-{}-{}", keepsake_raft::clock::now_us() / 1_000_000, std::process::id());
        let mut cluster = LocalCluster {
            dir: dir.to_path_buf(),
            certs: certs.clone(),
            client_addrs: (0..3).map(client).collect(),
            children: Vec::new(),
            keep_dir,
        };
        for i in 0..3u16 {
            let log = std::fs::File::create(dir.join(format!("node{}.log", i + 1)))?;
            let config = dir.join(format!("node{}.toml", i + 1));
            let tls_table = match &certs {
                Some(c) => {
                    let pair = crate::tls::certs::node_pair(c, u64::from(i) + 1);
                    let ca = c.join(crate::tls::certs::CA_CERT);
                    let file = |p: &Path| format!("{:?}", p.display().to_string());
                    format!("\n[tls]\nca = {}\ncert = {}\nkey = {}\n", file(&ca), file(&pair.cert), file(&pair.key))
                }
                // A benchmark bench on loopback: plaintext, chosen.
                None => "\n[tls]\ninsecure = true\n".into(),
            };
            std::fs::write(&config, format!("{base}{tls_table}"))?;
            let mut cmd = Command::new(&exe);
            cmd.arg("serve")
                .arg("--config")
                .arg(&config)
                .args(["--node-id", &(i + 1).to_string(), "--cluster-id", &cluster_id])
                .arg("--data-dir")
                .arg(dir.join(format!("node{}", i + 1)))
                .args(["--client-addr", &client(i), "--peer-addr", &peer(i)])
                .args(["--http-addr", &format!("127.0.0.1:{}", base_port + 200 + i)])
                .args(["--members", &members.join(",")])
                .stdin(Stdio::null())
                .stdout(Stdio::from(log.try_clone()?))
                .stderr(Stdio::from(log));
            die_with_parent(&mut cmd);
            cluster.children.push(cmd.spawn().context("start `keepsake serve`")?);
        }
        cluster.wait_for_leader().await?;
        Ok(cluster)
    }

    /// How a client reaches the cluster: with its operator's certificate, or in plaintext.
    pub fn client_tls(&self) -> Result<crate::cli::client::Tls, String> {
        let Some(certs) = &self.certs else { return Ok(None) };
        let client = crate::tls::certs::Pair::named(certs, "client");
        let files = crate::tls::client::ClientFiles {
            ca: certs.join(crate::tls::certs::CA_CERT),
            identity: Some((client.cert, client.key)),
        };
        files.tonic().map(Some)
    }

    pub fn pids(&self) -> Vec<(String, u32)> {
        self.children.iter().enumerate().map(|(i, c)| (format!("keepsake node {}", i + 1), c.id())).collect()
    }

    /// Until every node names the same leader and that node says it leads: a write sent the
    /// moment one node has seen an election may meet a leader that is already being replaced.
    async fn wait_for_leader(&mut self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let tls = self.client_tls().map_err(anyhow::Error::msg)?;
        loop {
            for child in &mut self.children {
                if let Some(status) = child.try_wait()? {
                    anyhow::bail!("a node exited ({status}) before a leader was elected; see {}", self.dir.display());
                }
            }
            let mut views = Vec::new();
            for addr in &self.client_addrs {
                let Ok(s) = node_status(addr, Duration::from_secs(2), &tls).await else { break };
                views.push((s.node_id, s.role, s.leader_id));
            }
            let leader = views.first().and_then(|v| v.2);
            let agreed = views.len() == self.client_addrs.len()
                && leader.is_some()
                && views.iter().all(|(_, _, l)| *l == leader)
                && views.iter().any(|(id, role, _)| Some(*id) == leader && role == "leader");
            if agreed {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("no agreed leader within 30 s; see the node logs in {}", self.dir.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for child in &self.children {
            #[allow(unsafe_code)]
            // SAFETY: kill with a pid we spawned and have not yet reaped.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM)
            };
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        for child in &mut self.children {
            while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
