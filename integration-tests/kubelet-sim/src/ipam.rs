//! Pod IP allocation: each pod gets its own loopback address from a /16 inside 127.0.0.0/8, so
//! several pods can listen on the same port (any 127.x.y.z can be bound without configuration).
//! Addresses are handed out round-robin so a freed address is not reused at once, as a real CNI
//! IPAM avoids immediate reuse.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// A pool of loopback addresses `127.<second>.0.2` … `127.<second>.255.254`.
#[derive(Debug)]
pub struct IpPool {
    second: u8,
    used: BTreeSet<u16>,
    next: u16,
}

/// Host part bounds: skip .0.0/.0.1 (network, "gateway") and .255.255 (broadcast).
const FIRST: u16 = 2;
const LAST: u16 = 0xfffe;

impl IpPool {
    /// A pool over `127.<second>.0.0/16`. `second` must not be 0 (127.0.0.1 is the node).
    pub fn new(second: u8) -> Self {
        IpPool {
            second: second.max(1),
            used: BTreeSet::new(),
            next: FIRST,
        }
    }

    /// The pool's CIDR, as written to the Node's `spec.podCIDR`.
    pub fn cidr(&self) -> String {
        format!("127.{}.0.0/16", self.second)
    }

    /// Take a free address, or None when all are in use.
    pub fn allocate(&mut self) -> Option<Ipv4Addr> {
        let span = usize::from(LAST - FIRST) + 1;
        if self.used.len() >= span {
            return None;
        }
        loop {
            let host = self.next;
            self.next = if self.next >= LAST {
                FIRST
            } else {
                self.next + 1
            };
            if self.used.insert(host) {
                let [a, b] = host.to_be_bytes();
                return Some(Ipv4Addr::new(127, self.second, a, b));
            }
        }
    }

    /// Return an address to the pool (addresses from elsewhere are ignored).
    pub fn release(&mut self, ip: Ipv4Addr) {
        let [first, second, a, b] = ip.octets();
        if first == 127 && second == self.second {
            self.used.remove(&u16::from_be_bytes([a, b]));
        }
    }

    /// Addresses currently allocated.
    pub fn in_use(&self) -> usize {
        self.used.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_distinct_and_in_the_range() {
        let mut p = IpPool::new(42);
        let a = p.allocate().unwrap();
        let b = p.allocate().unwrap();
        assert_eq!(a, Ipv4Addr::new(127, 42, 0, 2));
        assert_eq!(b, Ipv4Addr::new(127, 42, 0, 3));
        assert_eq!(p.cidr(), "127.42.0.0/16");
    }

    #[test]
    fn released_addresses_are_reused_only_after_wrapping() {
        let mut p = IpPool::new(1);
        let a = p.allocate().unwrap();
        p.release(a);
        assert_eq!(p.in_use(), 0);
        assert_ne!(p.allocate().unwrap(), a);
    }

    #[test]
    fn an_exhausted_pool_says_so() {
        let mut p = IpPool::new(7);
        let n = usize::from(LAST - FIRST) + 1;
        for _ in 0..n {
            assert!(p.allocate().is_some());
        }
        assert_eq!(p.allocate(), None);
        p.release(Ipv4Addr::new(127, 7, 1, 1));
        assert_eq!(p.allocate(), Some(Ipv4Addr::new(127, 7, 1, 1)));
    }
}
