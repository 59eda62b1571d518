//! A live lab: [`LabBuilder::build`] carries out a plan, [`Lab`] names its
//! namespaces, runs things in them, and removes them on drop.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;

use crate::forwarding::set_forwarding;
use crate::ip::{ip, ip_batch, ip_in};
use crate::name::Naming;
use crate::netns;
use crate::plan::LabBuilder;
use crate::sweep::sweep_stale;

/// Network namespaces built from a [`LabBuilder`]. Dropping it kills the
/// processes left in its namespaces and deletes them in reverse creation
/// order (which deletes their interfaces); errors are printed, never
/// panicked on, so this also cleans up while a panicking test unwinds.
#[derive(Debug)]
pub struct Lab {
    naming: Naming,
    nodes: Vec<String>,
    /// Namespaces created so far, in creation order (all deleted on drop).
    created: Vec<String>,
}

impl Lab {
    /// A plan whose namespaces are named with `prefix` (end it with `-`).
    pub fn builder(prefix: impl Into<String>) -> LabBuilder {
        LabBuilder::new(prefix)
    }

    /// The lab's id, the common part of its namespace names; also the alias
    /// of every veth end it created.
    pub fn id(&self) -> &str {
        self.naming.id()
    }

    /// The nodes, in declaration order.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// Names of the namespaces created, in creation order.
    pub fn namespaces(&self) -> &[String] {
        &self.created
    }

    /// The namespace name of `node` (as `ip netns list` shows it), following
    /// the lab's naming whether or not `node` is one of its nodes.
    pub fn ns(&self, node: &str) -> String {
        self.naming.ns(node)
    }

    /// Path of `node`'s namespace file, for setns(2) or `nsenter --net=`.
    pub fn path(&self, node: &str) -> PathBuf {
        netns::path(&self.ns(node))
    }

    /// `ip netns exec <node's namespace> PROGRAM` (see [`crate::command`]).
    pub fn command(&self, node: &str, program: impl AsRef<OsStr>) -> Command {
        crate::exec::command(&self.ns(node), program)
    }

    /// Runs `ip -n <node's namespace> ARGS...` and returns its output.
    pub fn ip(&self, node: &str, args: &[&str]) -> anyhow::Result<String> {
        ip_in(&self.ns(node), args)
    }

    /// Runs `f` on a fresh thread inside `node`'s namespace (see
    /// [`crate::run_in_netns`]).
    pub fn run_in<R, F>(&self, node: &str, f: F) -> anyhow::Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        crate::exec::run_in_netns(&self.path(node), f)
    }

    /// Kills every process in `node`'s namespace and waits until none is
    /// left (see [`crate::kill_all`]).
    pub fn kill_all(&self, node: &str) -> anyhow::Result<()> {
        netns::kill_all(&self.ns(node))
    }

    /// Turns forwarding in `node`'s namespace on or off.
    pub fn set_forwarding(&self, node: &str, on: bool) -> anyhow::Result<()> {
        set_forwarding(&self.ns(node), on)
    }

    /// Creates everything in `plan`, in the order [`LabBuilder`] documents.
    fn create(&mut self, plan: &LabBuilder) -> anyhow::Result<()> {
        for node in &plan.nodes {
            let name = self.ns(node);
            netns::add(&name).with_context(|| format!("creating namespace {name}"))?;
            self.created.push(name);
        }
        for bridge in &plan.bridges {
            ip_in(
                &self.ns(&bridge.node),
                &[
                    "link",
                    "add",
                    "name",
                    &bridge.name,
                    "type",
                    "bridge",
                    "forward_delay",
                    "0",
                ],
            )
            .with_context(|| format!("creating bridge {} in {}", bridge.name, bridge.node))?;
        }
        for veth in &plan.veths {
            let (ns_a, ns_b) = (self.ns(&veth.a.node), self.ns(&veth.b.node));
            let mtu = veth.mtu.map(|m| m.to_string());
            let mtu_args: Vec<&str> = match &mtu {
                Some(m) => vec!["mtu", m],
                None => Vec::new(),
            };
            // Both ends are made inside the namespaces: nothing appears in
            // the host's namespace, and the short names cannot collide.
            let mut args = vec!["-n", &ns_a, "link", "add", "name", &veth.a.ifname];
            args.extend(&mtu_args);
            args.extend(["type", "veth", "peer", "name", &veth.b.ifname]);
            args.extend(&mtu_args);
            args.extend(["netns", &ns_b]);
            ip(&args).with_context(|| {
                format!(
                    "creating veth {}:{} - {}:{}",
                    veth.a.node, veth.a.ifname, veth.b.node, veth.b.ifname
                )
            })?;
        }
        for node in &plan.nodes {
            ip_batch(&self.ns(node), &self.node_lines(plan, node))
                .with_context(|| format!("configuring {node}"))?;
        }
        for (node, on) in &plan.forwarding {
            self.set_forwarding(node, *on)?;
        }
        Ok(())
    }

    /// The `ip -batch` lines that configure `node` once its interfaces exist.
    fn node_lines(&self, plan: &LabBuilder, node: &str) -> Vec<String> {
        let mut lines = vec!["link set lo up".to_owned()];
        for bridge in plan.bridges.iter().filter(|b| b.node == node) {
            lines.push(format!("link set dev {} up", bridge.name));
        }
        let ends: Vec<_> = plan.ends().filter(|e| e.node == node).collect();
        for end in &ends {
            if let Some(master) = &end.master {
                lines.push(format!("link set dev {} master {master}", end.ifname));
            }
            lines.push(format!("link set dev {} alias {}", end.ifname, self.id()));
        }
        for a in plan.addresses.iter().filter(|a| a.node == node) {
            let nodad = if a.cidr.is_ipv6() { " nodad" } else { "" };
            lines.push(format!("addr add {} dev {}{nodad}", a.cidr, a.ifname));
        }
        for end in &ends {
            lines.push(format!("link set dev {} up", end.ifname));
        }
        for r in plan.routes.iter().filter(|r| r.node == node) {
            lines.push(format!("route add {} via {}", r.dest, r.via));
        }
        lines
    }
}

impl LabBuilder {
    /// Checks the plan and creates the lab. Unique names: first sweeps
    /// leftovers of dead runs of the same prefix ([`sweep_stale`]); fixed
    /// names: first removes namespaces of the same names. On error, whatever
    /// was created is removed again.
    pub fn build(self) -> anyhow::Result<Lab> {
        self.check().context("checking the lab's plan")?;
        crate::require_root()?;
        let naming = if self.fixed_names {
            let naming = Naming::Fixed {
                prefix: self.prefix.clone(),
            };
            for node in &self.nodes {
                let name = naming.ns(node);
                netns::destroy(&name)
                    .with_context(|| format!("removing the leftover namespace {name}"))?;
            }
            naming
        } else {
            report_sweep(&self.prefix);
            Naming::unique(&self.prefix)
        };
        let mut lab = Lab {
            naming,
            nodes: self.nodes.clone(),
            created: Vec::new(),
        };
        // On error `lab` is dropped here, which deletes what was created.
        lab.create(&self)
            .with_context(|| format!("building lab {}", lab.id()))?;
        Ok(lab)
    }
}

/// Sweeps leftovers of dead runs and says what it removed (a failed sweep
/// does not stop the build).
fn report_sweep(prefix: &str) {
    match sweep_stale(prefix) {
        Ok(removed) if !removed.is_empty() => {
            eprintln!(
                "netlab: removed namespaces of dead runs: {}",
                removed.join(", ")
            );
        }
        Ok(_) => {}
        Err(e) => eprintln!("netlab: could not sweep stale {prefix}* namespaces: {e:#}"),
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Never panic here: this also runs while a failed test unwinds.
        for name in self.created.iter().rev() {
            if let Err(e) = netns::destroy(name) {
                eprintln!("netlab: removing namespace {name}: {e:#}");
            }
        }
    }
}
