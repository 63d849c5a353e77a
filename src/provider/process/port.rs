//! Ports handed to replicas, leased until the replica is reaped.
//!
//! A replica is told its port in `PORT` and binds it itself, some time after the kernel named
//! the port free: for a Python function that is tens of milliseconds, for a JVM seconds. In
//! that window the kernel may name the same port to the next replica started, by this
//! provider or another in the same process. Both children then race for one port; the loser
//! exits, and the winner's listener answers the loser's readiness probe, so requests for one
//! function would reach another. Leasing every port handed out until its replica is reaped
//! closes that window within a process.

use std::collections::BTreeSet;
use std::io;
use std::net::TcpListener;

use parking_lot::Mutex;

/// Ports leased to replicas of every provider in this process.
static LEASED: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
/// The kernel picks a random free port each time, so a leased one comes back rarely; this
/// bounds the asking should the leases ever fill the range.
const ATTEMPTS: usize = 64;

/// A port on 127.0.0.1 no other replica of this process holds; released when dropped.
#[derive(Debug)]
pub(super) struct PortLease {
    port: u16,
}

impl PortLease {
    /// Asks the kernel for a free port (binding port 0 is the only portable way), skipping
    /// leased ones. Listeners on skipped ports stay open until the end so the kernel cannot
    /// name them again in the meantime.
    pub(super) fn take() -> io::Result<PortLease> {
        let mut held = Vec::new();
        for _ in 0..ATTEMPTS {
            let listener = TcpListener::bind(("127.0.0.1", 0))?;
            let port = listener.local_addr()?.port();
            if let Some(lease) = PortLease::claim(port) {
                return Ok(lease);
            }
            held.push(listener);
        }
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("every port offered in {ATTEMPTS} tries is leased to another replica"),
        ))
    }

    fn claim(port: u16) -> Option<PortLease> {
        let fresh = LEASED.lock().insert(port);
        fresh.then(|| PortLease { port })
    }

    pub(super) fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        LEASED.lock().remove(&self.port);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leased_port_is_not_leased_again_until_released() {
        let first = PortLease::take().unwrap();
        let port = first.port();
        assert!(PortLease::claim(port).is_none(), "leased twice");
        drop(first);
        let again = PortLease::claim(port).expect("released with its lease");
        assert_eq!(again.port(), port);
    }

    #[test]
    fn leases_taken_together_are_all_different() {
        let leases: Vec<PortLease> = (0..200).map(|_| PortLease::take().unwrap()).collect();
        let ports: BTreeSet<u16> = leases.iter().map(PortLease::port).collect();
        assert_eq!(ports.len(), leases.len());
    }
}
