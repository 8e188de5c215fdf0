//! A network namespace made for one test: loopback up and the test's addresses on it, so
//! what the test binds, dials and redirects touches nothing else on the machine.
//!
//! **Needs root**; without it the test fails and says so. CI runs as root.

use std::process::Command;

/// A network namespace, deleted on drop.
pub struct NetNs {
    name: String,
}

/// Runs a command and fails the test with its stderr if it fails.
pub fn run(command: &mut Command) {
    let output = command.output().expect("the command runs");
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl NetNs {
    /// Makes the namespace; `addresses` (`10.244.0.1/24`, `240.240.0.1/32`) go on its
    /// loopback, so each is local inside it.
    pub fn new(tag: &str, addresses: &[&str]) -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root: it makes a network namespace"
        );
        let name = format!("weft-{tag}-{}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]));
        let netns = Self { name };
        netns.exec(&["ip", "link", "set", "lo", "up"]);
        for address in addresses {
            netns.exec(&["ip", "addr", "add", address, "dev", "lo"]);
        }
        netns
    }

    /// Links this namespace to `other` with a veth pair, `address` (`10.10.0.1/24`) on this
    /// side and `other_address` on the other: traffic between them leaves loopback, as
    /// between two pods.
    pub fn link(&self, address: &str, other: &NetNs, other_address: &str) {
        static LINKS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = LINKS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (here, there) = (
            format!("wa{}x{n}", std::process::id()),
            format!("wb{}x{n}", std::process::id()),
        );
        run(Command::new("ip").args([
            "link",
            "add",
            &here,
            "netns",
            &self.name,
            "type",
            "veth",
            "peer",
            "name",
            &there,
            "netns",
            &other.name,
        ]));
        self.exec(&["ip", "addr", "add", address, "dev", &here]);
        self.exec(&["ip", "link", "set", &here, "up"]);
        other.exec(&["ip", "addr", "add", other_address, "dev", &there]);
        other.exec(&["ip", "link", "set", &there, "up"]);
    }

    /// The namespace's name, for `ip netns exec`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args));
    }

    /// Runs `body` on a thread inside the namespace: the sockets it opens, the threads and
    /// the processes it starts live there.
    pub fn enter<T: Send + 'static>(&self, body: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        let thread = std::thread::spawn(move || {
            let namespace = std::fs::File::open(&path).expect("the namespace exists");
            nix::sched::setns(namespace, nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("the thread enters the namespace");
            body()
        });
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}
