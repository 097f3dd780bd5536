//! Applies a [`RedirectTable`] to one namespace by running the `nft` program inside it (a child
//! started from a [`Netns::run`] thread inherits that thread's namespace).
//!
//! Why `nft -f -` and not a netlink nftables crate: the scripts are the lab's rules verbatim
//! (spec §2.4), `nft -f` applies a whole script as one atomic transaction, the same text can be
//! replayed by an operator with `nsenter -n -t <pid> nft -f`, and the tests check the kernel's
//! own view (`nft list`) rather than a crate's encoding of it. Pure-Rust nftables netlink
//! crates either shell out to `nft` themselves or need hand-built expression bytecode for
//! `dnat ... map` and `ct status`, which would be more code to get wrong. Cost: the image ships
//! `nft` (Debian `nftables`), and each change is a fork+exec (~ms), which happens only on pod
//! deaths and app ends, never on the data path.
//!
//! Reconcile, not assume: every apply lists the table first (kernel state survives agent
//! restarts, spec §5.2) and writes only the difference.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::netns::Netns;
use super::redirect::{parse_listing, Observed, Plan, RedirectTable, FAMILY, TABLE};
use super::PodnetError;

/// What one reconcile did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The table was already as desired; nothing was written.
    Unchanged,
    /// The table was created or replaced whole.
    Replaced,
    /// Elements were added and removed.
    Elements { added: usize, removed: usize },
}

/// Runs `nft` in namespaces.
#[derive(Debug, Clone)]
pub struct Nft {
    program: PathBuf,
}

impl Default for Nft {
    fn default() -> Self {
        Nft { program: PathBuf::from("nft") }
    }
}

impl Nft {
    /// `program`: the `nft` binary (a path, or a name looked up in `PATH`).
    pub fn new(program: impl Into<PathBuf>) -> Nft {
        Nft { program: program.into() }
    }

    /// Our table in `netns` as nft reports it; `None` when there is none.
    pub fn observe(&self, netns: &Netns) -> Result<Option<Observed>, PodnetError> {
        let json = self.run(netns, &["-j", "list", "table", FAMILY, TABLE], None)?;
        Ok(json.map(|json| parse_listing(&json)))
    }

    /// Makes `netns`'s table equal `desired`, writing only what differs.
    pub fn reconcile(&self, netns: &Netns, desired: &RedirectTable) -> Result<Applied, PodnetError> {
        let observed = self.observe(netns)?;
        let plan = desired.plan(observed.as_ref());
        if let Some(script) = plan.script() {
            self.run(netns, &["-f", "-"], Some(script))?;
        }
        Ok(match plan {
            Plan::Nothing => Applied::Unchanged,
            Plan::Replace(_) => Applied::Replaced,
            Plan::Elements { added, removed, .. } => Applied::Elements { added, removed },
        })
    }

    /// Deletes our table from `netns`, if there is one (the pod ends, or pod mode is turned off).
    pub fn remove(&self, netns: &Netns) -> Result<bool, PodnetError> {
        let script = format!("add table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n");
        let existed = self.observe(netns)?.is_some();
        self.run(netns, &["-f", "-"], Some(&script))?;
        Ok(existed)
    }

    /// Runs `nft args` inside `netns` with `stdin`. `Ok(None)`: nft said the table does not
    /// exist (only asked of `list`).
    fn run(&self, netns: &Netns, args: &[&str], stdin: Option<&str>) -> Result<Option<String>, PodnetError> {
        let program = self.program.clone();
        let output = netns.run(|| {
            let mut child = Command::new(&program)
                .args(args)
                .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?;
            if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
                pipe.write_all(text.as_bytes())?;
            }
            child.wait_with_output()
        })?;
        let output = output.map_err(|source| PodnetError::NftSpawn { program: self.program.clone(), source })?;
        if output.status.success() {
            return Ok(Some(String::from_utf8_lossy(&output.stdout).into_owned()));
        }
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        if args.contains(&"list") && stderr.contains("No such file or directory") {
            return Ok(None);
        }
        Err(PodnetError::Nft {
            netns: netns.path().into(),
            args: args.join(" "),
            stderr,
            script: stdin.map(str::to_string),
        })
    }
}
