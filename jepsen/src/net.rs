//! The harness's network: one namespace per node, joined by veth pairs to a bridge that lives
//! in a namespace of its own, where the harness's clients run. Nothing is added to the host's
//! own network; everything made here is named `rmqj-*` and removed by [`Net::teardown`] (and
//! by [`Net::clear_leftovers`] at the start of a run, for whatever a killed run left).
//!
//! ```text
//!   rmqj-ctl  (the harness: clients, nemesis)   bridge br0  10.77.0.1/24
//!      ├── veth ── rmqj-ns  (name server)       10.77.0.2
//!      ├── veth ── rmqj-n1  (broker 1)          10.77.0.11
//!      ├── veth ── rmqj-n2  (broker 2)          10.77.0.12
//!      └── …
//! ```
//!
//! Faults on the network are nftables rules in the nodes' namespaces (a table `inet rmqj`,
//! one input chain): a partition drops what arrives from the nodes on the other side; loss
//! drops a share of the packets at random (`numgen random`). Only traffic between brokers is
//! cut by a partition: the harness's clients and the name server reach every node, as a
//! client on the other side of a cut would reach one side or the other.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// Every name this harness makes starts with this.
pub const PREFIX: &str = "rmqj-";
/// The namespace of the bridge and of the harness itself.
pub const CTL: &str = "rmqj-ctl";
/// The name server's namespace.
pub const NAMESRV: &str = "rmqj-ns";

/// The harness's address on the bridge.
pub const CTL_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The name server's address.
pub const NAMESRV_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

/// Broker `id`'s namespace.
pub fn node_ns(id: u64) -> String {
    format!("{PREFIX}n{id}")
}

/// Broker `id`'s address.
pub fn node_addr(id: u64) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, 10 + id as u8)
}

/// Runs `ip` (or any command) and fails with its stderr if it fails.
fn run(cmd: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs an nft script inside namespace `ns`.
fn nft(ns: &str, script: &str) -> anyhow::Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft (is nftables installed? `apt-get install nftables`)")?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft in {ns}: {} (script: {script})",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The namespaces and links of one run.
pub struct Net {
    nodes: Vec<u64>,
}

impl Net {
    /// Checks the tools this needs are here and the harness runs as root.
    pub fn preflight() -> anyhow::Result<()> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!("the harness makes network namespaces: run it as root");
        }
        run("ip", &["-V"]).context("`ip` (iproute2) is needed")?;
        run("nft", &["--version"])
            .context("`nft` is needed: apt-get install nftables (Debian's package)")?;
        Ok(())
    }

    /// Removes every `rmqj-*` namespace, killing what still runs inside (a run that was
    /// killed leaves them behind).
    pub fn clear_leftovers() -> anyhow::Result<()> {
        let out = Command::new("ip").args(["netns", "list"]).output()?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if name.starts_with(PREFIX) {
                kill_inside(name);
                let _ = run("ip", &["netns", "del", name]);
            }
        }
        Ok(())
    }

    /// Makes the namespaces of the name server and of brokers `1..=replicas`, and the bridge.
    pub fn setup(replicas: u64) -> anyhow::Result<Net> {
        Self::clear_leftovers()?;
        run("ip", &["netns", "add", CTL])?;
        run("ip", &["-n", CTL, "link", "set", "lo", "up"])?;
        run("ip", &["-n", CTL, "link", "add", "br0", "type", "bridge"])?;
        run(
            "ip",
            &[
                "-n",
                CTL,
                "addr",
                "add",
                &format!("{CTL_ADDR}/24"),
                "dev",
                "br0",
            ],
        )?;
        run("ip", &["-n", CTL, "link", "set", "br0", "up"])?;
        let nodes: Vec<u64> = (1..=replicas).collect();
        attach(NAMESRV, "vns", NAMESRV_ADDR)?;
        for &id in &nodes {
            attach(&node_ns(id), &format!("v{id}"), node_addr(id))?;
            nft(
                &node_ns(id),
                "table inet rmqj {\n chain input {\n  type filter hook input priority 0; policy accept;\n }\n}\n",
            )?;
        }
        Ok(Net { nodes })
    }

    /// Heals every fault on the network.
    pub fn heal(&self) -> anyhow::Result<()> {
        for &id in &self.nodes {
            nft(&node_ns(id), "flush chain inet rmqj input\n")?;
        }
        Ok(())
    }

    /// Cuts the network into components: a node hears only the brokers of its own
    /// component(s). `sees[i]` is the set of nodes node `i` still hears (itself included).
    pub fn partition(&self, sees: &[(u64, BTreeSet<u64>)]) -> anyhow::Result<()> {
        for (id, heard) in sees {
            let drop: Vec<String> = self
                .nodes
                .iter()
                .filter(|n| !heard.contains(n) && *n != id)
                .map(|&n| node_addr(n).to_string())
                .collect();
            if drop.is_empty() {
                continue;
            }
            nft(
                &node_ns(*id),
                &format!(
                    "add rule inet rmqj input ip saddr {{ {} }} drop\n",
                    drop.join(", ")
                ),
            )?;
        }
        Ok(())
    }

    /// Drops `percent` % of the packets arriving at each of `nodes`, at random.
    pub fn loss(&self, nodes: &[u64], percent: u32) -> anyhow::Result<()> {
        for &id in nodes {
            nft(
                &node_ns(id),
                &format!(
                    "add rule inet rmqj input iifname \"eth0\" numgen random mod 100 < {percent} drop\n"
                ),
            )?;
        }
        Ok(())
    }

    /// Moves the calling thread into the bridge's namespace: the harness's clients then
    /// reach the nodes. Call it before any other thread starts (threads made later inherit
    /// it).
    pub fn enter_ctl() -> anyhow::Result<()> {
        let f = std::fs::File::open(format!("/run/netns/{CTL}"))
            .context("opening the harness's namespace")?;
        // SAFETY: setns on an open namespace file descriptor; affects this thread only.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
        if rc != 0 {
            bail!("setns into {CTL}: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Removes everything [`Net::setup`] made (processes still inside are killed).
    pub fn teardown(&self) {
        let _ = Self::clear_leftovers();
    }
}

/// A namespace `ns` joined to the bridge by a veth pair (`host` on the bridge's side, `eth0`
/// inside), with address `addr`.
fn attach(ns: &str, host: &str, addr: Ipv4Addr) -> anyhow::Result<()> {
    run("ip", &["netns", "add", ns])?;
    run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
    run(
        "ip",
        &[
            "-n", CTL, "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ],
    )?;
    run("ip", &["-n", CTL, "link", "set", host, "master", "br0"])?;
    run("ip", &["-n", CTL, "link", "set", host, "up"])?;
    run(
        "ip",
        &[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ],
    )?;
    run("ip", &["-n", ns, "link", "set", "eth0", "up"])?;
    Ok(())
}

/// SIGKILLs every process in namespace `ns` but this one (and SIGCONTs it first: a paused process dies
/// only once it runs).
fn kill_inside(ns: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() else {
        return;
    };
    let me = std::process::id() as i32;
    for pid in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .filter(|&p| p != me)
    {
        // SAFETY: signalling a pid; at worst it has exited already (ESRCH).
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::kill(pid, libc::SIGCONT);
        }
    }
}
