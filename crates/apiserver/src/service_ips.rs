//! What the server hands out to Services, as kube-apiserver's `ipallocator` and
//! `portallocator`: cluster IPs from `--service-cidr` (the network and broadcast addresses
//! never; the first host address, `.1`, only on request, for the `kubernetes` Service) and node
//! ports from `--service-node-port-range`.
//!
//! Every address and port has an owner (`namespace/name` of its Service). A reservation is
//! pending until the write that carries it is stored ([`Reservation::keep`]); dropped, it is
//! given back. Once a Service is stored, whatever its owner holds that the stored object no
//! longer carries is released ([`ServiceAllocator::settle`]); when it is removed, all of it.
//! At start the allocation is rebuilt from the stored Services ([`ServiceAllocator::restore`]).
//! One mutex guards the lot: concurrent creates never get the same address.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, MutexGuard};

use rand::Rng;

/// An IPv4 range `a.b.c.d/n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    base: u32,
    bits: u8,
}

impl Ipv4Cidr {
    /// Parses `a.b.c.d/n` (n between 8 and 30); the address is masked to the network's.
    pub fn parse(s: &str) -> Option<Self> {
        let (ip, bits) = s.split_once('/')?;
        let ip: Ipv4Addr = ip.parse().ok()?;
        let bits: u8 = bits.parse().ok().filter(|b| (8..=30).contains(b))?;
        let mask = u32::MAX << (32 - u32::from(bits));
        Some(Ipv4Cidr {
            base: u32::from(ip) & mask,
            bits,
        })
    }

    fn size(&self) -> u32 {
        1 << (32 - u32::from(self.bits))
    }

    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip).wrapping_sub(self.base) < self.size()
    }

    /// The `n`th address of the range (0 is the network address).
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.base + n)
    }
}

impl std::fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.bits)
    }
}

/// The Service network of a server: `--service-cidr` and `--service-node-port-range`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceNetwork {
    /// Where cluster IPs come from.
    pub cidr: Ipv4Cidr,
    /// Where node ports come from.
    pub node_ports: RangeInclusive<u16>,
}

impl Default for ServiceNetwork {
    /// kube-apiserver's defaults: `10.96.0.0/12` and `30000-32767`.
    fn default() -> Self {
        ServiceNetwork {
            cidr: Ipv4Cidr {
                base: u32::from(Ipv4Addr::new(10, 96, 0, 0)),
                bits: 12,
            },
            node_ports: 30000..=32767,
        }
    }
}

impl ServiceNetwork {
    /// The `kubernetes` Service's address: the first host address of the range.
    pub fn api_service_ip(&self) -> Ipv4Addr {
        self.cidr.nth(1)
    }
}

/// Parses a port range `lo-hi` (`--service-node-port-range`).
pub fn parse_port_range(s: &str) -> Option<RangeInclusive<u16>> {
    let (lo, hi) = s.split_once('-')?;
    let (lo, hi): (u16, u16) = (lo.trim().parse().ok()?, hi.trim().parse().ok()?);
    (lo >= 1 && lo <= hi).then_some(lo..=hi)
}

/// Why an address or port was not handed out, in kube-apiserver's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocationError {
    /// The requested one is taken.
    #[error("provided {0} is already allocated")]
    Taken(&'static str),
    /// The requested IP is outside `--service-cidr`.
    #[error("provided IP is not in the valid range. The range of valid IPs is {0}")]
    IpOutOfRange(Ipv4Cidr),
    /// The requested port is outside `--service-node-port-range`.
    #[error("provided port is not in the valid range. The range of valid ports is {0}-{1}")]
    PortOutOfRange(u16, u16),
    /// Nothing is left.
    #[error("range is full")]
    Full,
}

#[derive(Debug, Clone)]
struct Entry {
    owner: String,
    /// Reserved by a write not yet stored.
    pending: bool,
}

#[derive(Default)]
struct State {
    ips: HashMap<Ipv4Addr, Entry>,
    ports: HashMap<u16, Entry>,
}

/// Cluster IPs and node ports handed out to Services.
pub struct ServiceAllocator {
    network: ServiceNetwork,
    state: Mutex<State>,
}

/// What one write reserved; given back when dropped unless [`Reservation::keep`] was called
/// once the write was stored.
#[must_use]
#[derive(Default)]
pub struct Reservation {
    held: Option<(Arc<ServiceAllocator>, Vec<Ipv4Addr>, Vec<u16>)>,
}

impl Reservation {
    /// A reservation of nothing.
    pub fn none() -> Self {
        Reservation::default()
    }

    /// The write is stored: what it reserved stays its owner's.
    pub fn keep(mut self) {
        if let Some((allocator, ips, ports)) = self.held.take() {
            let mut state = allocator.lock();
            for ip in ips {
                if let Some(e) = state.ips.get_mut(&ip) {
                    e.pending = false;
                }
            }
            for port in ports {
                if let Some(e) = state.ports.get_mut(&port) {
                    e.pending = false;
                }
            }
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some((allocator, ips, ports)) = self.held.take() {
            let mut state = allocator.lock();
            for ip in ips {
                if state.ips.get(&ip).is_some_and(|e| e.pending) {
                    state.ips.remove(&ip);
                }
            }
            for port in ports {
                if state.ports.get(&port).is_some_and(|e| e.pending) {
                    state.ports.remove(&port);
                }
            }
        }
    }
}

/// What one write asks for: requested (or any) IPs and node ports for one owner.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Request {
    /// A cluster IP: `Some(Some(ip))` that one, `Some(None)` any.
    pub ip: Option<Option<Ipv4Addr>>,
    /// Node ports, one per Service port: that one, or any.
    pub ports: Vec<Option<u16>>,
}

/// Where an allocation failed: the cluster IP, or the node port of the Service port at this
/// index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failed {
    /// The cluster IP.
    Ip(AllocationError),
    /// The node port of `spec.ports[i]`.
    Port(usize, AllocationError),
}

/// What a request was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    /// The cluster IP, if one was asked for.
    pub ip: Option<Ipv4Addr>,
    /// The node ports, in the order asked.
    pub ports: Vec<u16>,
}

impl ServiceAllocator {
    /// An allocator with nothing handed out.
    pub fn new(network: ServiceNetwork) -> Arc<Self> {
        Arc::new(ServiceAllocator {
            network,
            state: Mutex::new(State::default()),
        })
    }

    /// The network this allocator hands out from.
    pub fn network(&self) -> &ServiceNetwork {
        &self.network
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves what `request` asks for `owner`, all or nothing. An address or port its owner
    /// already holds is granted again (an update keeping it). With `dry_run` nothing is
    /// reserved, only checked.
    pub fn reserve(
        self: &Arc<Self>,
        owner: &str,
        request: &Request,
        dry_run: bool,
    ) -> Result<(Granted, Reservation), Failed> {
        let mut state = self.lock();
        let mut ips = Vec::new();
        let mut ports: Vec<u16> = Vec::new();
        let mut granted = Granted {
            ip: None,
            ports: Vec::new(),
        };
        let mut outcome = Ok(());
        if let Some(ip) = request.ip {
            match self.pick_ip(&state, owner, ip) {
                Ok(ip) => {
                    granted.ip = Some(ip);
                    if let std::collections::hash_map::Entry::Vacant(e) = state.ips.entry(ip) {
                        ips.push(ip);
                        e.insert(pending(owner));
                    }
                }
                Err(e) => outcome = Err(Failed::Ip(e)),
            }
        }
        if outcome.is_ok() {
            // The ports asked for first, then any for the others, so that a free pick never
            // takes a number another port of the same Service asks for.
            let mut slots: Vec<Option<u16>> = vec![None; request.ports.len()];
            let (asked, any): (Vec<_>, Vec<_>) = request
                .ports
                .iter()
                .enumerate()
                .partition(|(_, p)| p.is_some());
            for (i, port) in asked.into_iter().chain(any) {
                // The same number twice in one Service (TCP and UDP) is one node port.
                let port = match port {
                    Some(p) if slots.contains(&Some(*p)) => Ok(*p),
                    _ => self.pick_port(&state, owner, *port),
                };
                match port {
                    Ok(p) => {
                        slots[i] = Some(p);
                        if let std::collections::hash_map::Entry::Vacant(e) = state.ports.entry(p) {
                            ports.push(p);
                            e.insert(pending(owner));
                        }
                    }
                    Err(e) => {
                        outcome = Err(Failed::Port(i, e));
                        break;
                    }
                }
            }
            granted.ports = slots.into_iter().flatten().collect();
        }
        drop(state);
        let reservation = Reservation {
            held: Some((self.clone(), ips, ports)),
        };
        outcome?;
        if dry_run {
            // Dropping gives back what the check took.
            drop(reservation);
            return Ok((granted, Reservation::none()));
        }
        Ok((granted, reservation))
    }

    fn pick_ip(
        &self,
        state: &State,
        owner: &str,
        requested: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, AllocationError> {
        let cidr = self.network.cidr;
        let size = cidr.size();
        if let Some(ip) = requested {
            let n = u32::from(ip).wrapping_sub(cidr.base);
            if !cidr.contains(ip) || n == 0 || n == size - 1 {
                return Err(AllocationError::IpOutOfRange(cidr));
            }
            return match state.ips.get(&ip) {
                Some(e) if e.owner != owner => Err(AllocationError::Taken("IP")),
                _ => Ok(ip),
            };
        }
        // Host addresses 2..size-2: .1 is the `kubernetes` Service's. A random start, then the
        // next free one, as upstream's random scan.
        let candidates = size - 3;
        let start = rand::rng().random_range(0..candidates);
        (0..candidates)
            .map(|i| cidr.nth(2 + (start + i) % candidates))
            .find(|ip| !state.ips.contains_key(ip))
            .ok_or(AllocationError::Full)
    }

    fn pick_port(
        &self,
        state: &State,
        owner: &str,
        requested: Option<u16>,
    ) -> Result<u16, AllocationError> {
        let range = &self.network.node_ports;
        if let Some(port) = requested {
            if !range.contains(&port) {
                return Err(AllocationError::PortOutOfRange(
                    *range.start(),
                    *range.end(),
                ));
            }
            return match state.ports.get(&port) {
                Some(e) if e.owner != owner => Err(AllocationError::Taken("port")),
                _ => Ok(port),
            };
        }
        let count = u32::from(*range.end() - *range.start()) + 1;
        let start = rand::rng().random_range(0..count);
        (0..count)
            .map(|i| *range.start() + ((start + i) % count) as u16)
            .find(|p| !state.ports.contains_key(p))
            .ok_or(AllocationError::Full)
    }

    /// The Service of `owner` is stored holding `ips` and `ports` (or removed, with none):
    /// whatever else it held and no write in flight reserved is given back.
    pub fn settle(&self, owner: &str, ips: &[Ipv4Addr], ports: &[u16]) {
        let mut state = self.lock();
        state
            .ips
            .retain(|ip, e| e.owner != owner || e.pending || ips.contains(ip));
        state
            .ports
            .retain(|p, e| e.owner != owner || e.pending || ports.contains(p));
    }

    /// Records what a stored Service holds (at start). Returns what was already another's
    /// (the stored state contradicts itself; the first one keeps it).
    pub fn restore(&self, owner: &str, ips: &[Ipv4Addr], ports: &[u16]) -> Vec<String> {
        let mut state = self.lock();
        let mut clashes = Vec::new();
        let entry = || Entry {
            owner: owner.to_owned(),
            pending: false,
        };
        for ip in ips {
            match state.ips.get(ip) {
                Some(e) if e.owner != owner => clashes.push(ip.to_string()),
                _ => {
                    state.ips.insert(*ip, entry());
                }
            }
        }
        for port in ports {
            match state.ports.get(port) {
                Some(e) if e.owner != owner => clashes.push(port.to_string()),
                _ => {
                    state.ports.insert(*port, entry());
                }
            }
        }
        clashes
    }

    /// Who holds `ip`, if anyone.
    pub fn ip_owner(&self, ip: Ipv4Addr) -> Option<String> {
        self.lock().ips.get(&ip).map(|e| e.owner.clone())
    }

    /// Who holds node port `port`, if anyone.
    pub fn port_owner(&self, port: u16) -> Option<String> {
        self.lock().ports.get(&port).map(|e| e.owner.clone())
    }
}

fn pending(owner: &str) -> Entry {
    Entry {
        owner: owner.to_owned(),
        pending: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Arc<ServiceAllocator> {
        // 10.0.0.0/29: .0 network, .1 the API's, .2-.6 handed out, .7 broadcast.
        ServiceAllocator::new(ServiceNetwork {
            cidr: Ipv4Cidr::parse("10.0.0.0/29").unwrap(),
            node_ports: 30000..=30002,
        })
    }

    fn any_ip() -> Request {
        Request {
            ip: Some(None),
            ports: vec![],
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_parse_like_the_flags() {
        let cases: &[(&str, Option<&str>)] = &[
            ("10.96.0.0/12", Some("10.96.0.0/12")),
            ("10.96.3.4/12", Some("10.96.0.0/12")),
            ("10.96.0.0/31", None),
            ("10.96.0.0", None),
            ("nope/12", None),
        ];
        for (input, want) in cases {
            assert_eq!(
                Ipv4Cidr::parse(input).map(|c| c.to_string()).as_deref(),
                *want,
                "{input}"
            );
        }
        assert_eq!(parse_port_range("30000-32767"), Some(30000..=32767));
        assert_eq!(parse_port_range("5-4"), None);
        assert_eq!(parse_port_range("0-4"), None);
        assert_eq!(ServiceNetwork::default().api_service_ip(), ip("10.96.0.1"));
    }

    #[test]
    fn hands_out_every_host_address_but_the_first_then_is_full() {
        let a = small();
        let mut got = Vec::new();
        for i in 0..5 {
            let (g, r) = a.reserve(&format!("ns/s{i}"), &any_ip(), false).unwrap();
            r.keep();
            got.push(g.ip.unwrap());
        }
        got.sort();
        assert_eq!(
            got,
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"].map(ip)
        );
        assert_eq!(
            a.reserve("ns/more", &any_ip(), false).err(),
            Some(Failed::Ip(AllocationError::Full))
        );
    }

    #[test]
    fn requested_addresses_are_checked() {
        let a = small();
        let want = |s: &str| Request {
            ip: Some(Some(ip(s))),
            ports: vec![],
        };
        let (g, r) = a
            .reserve("default/kubernetes", &want("10.0.0.1"), false)
            .unwrap();
        r.keep();
        assert_eq!(g.ip, Some(ip("10.0.0.1")));
        let cases: &[(&str, &str, Option<AllocationError>)] = &[
            ("ns/b", "10.0.0.1", Some(AllocationError::Taken("IP"))),
            // Its owner asking again (an update) gets it.
            ("default/kubernetes", "10.0.0.1", None),
            (
                "ns/b",
                "10.0.0.0",
                Some(AllocationError::IpOutOfRange(a.network.cidr)),
            ),
            (
                "ns/b",
                "10.0.0.7",
                Some(AllocationError::IpOutOfRange(a.network.cidr)),
            ),
            (
                "ns/b",
                "10.0.1.3",
                Some(AllocationError::IpOutOfRange(a.network.cidr)),
            ),
        ];
        for (owner, requested, want_err) in cases {
            let got = a.reserve(owner, &want(requested), true);
            assert_eq!(
                got.err(),
                want_err.clone().map(Failed::Ip),
                "{owner} asking {requested}"
            );
        }
        assert_eq!(
            AllocationError::IpOutOfRange(a.network.cidr).to_string(),
            "provided IP is not in the valid range. The range of valid IPs is 10.0.0.0/29"
        );
    }

    #[test]
    fn a_dropped_reservation_and_a_dry_run_give_back() {
        let a = small();
        let want = Request {
            ip: Some(Some(ip("10.0.0.3"))),
            ports: vec![Some(30001)],
        };
        let (_, r) = a.reserve("ns/a", &want, false).unwrap();
        assert_eq!(a.ip_owner(ip("10.0.0.3")).as_deref(), Some("ns/a"));
        assert!(a.reserve("ns/b", &want, false).is_err());
        drop(r);
        assert_eq!(a.ip_owner(ip("10.0.0.3")), None);
        assert_eq!(a.port_owner(30001), None);
        let (g, r) = a.reserve("ns/b", &want, true).unwrap();
        assert_eq!(g.ports, vec![30001]);
        r.keep();
        assert_eq!(a.ip_owner(ip("10.0.0.3")), None);
        // A failing port leaves no IP behind either.
        let (_, r) = a
            .reserve(
                "ns/c",
                &Request {
                    ip: None,
                    ports: vec![Some(30001)],
                },
                false,
            )
            .unwrap();
        r.keep();
        assert_eq!(
            a.reserve("ns/b", &want, false).err(),
            Some(Failed::Port(0, AllocationError::Taken("port")))
        );
        assert_eq!(a.ip_owner(ip("10.0.0.3")), None);
    }

    #[test]
    fn node_ports_come_from_the_range() {
        let a = small();
        let ports = |p: Vec<Option<u16>>| Request { ip: None, ports: p };
        let (g, r) = a
            .reserve("ns/a", &ports(vec![None, Some(30000), Some(30000)]), false)
            .unwrap();
        r.keep();
        assert_eq!(g.ports[1..], [30000, 30000]);
        assert!(g.ports[0] == 30001 || g.ports[0] == 30002);
        let cases: &[(Option<u16>, AllocationError)] = &[
            (Some(30000), AllocationError::Taken("port")),
            (Some(29999), AllocationError::PortOutOfRange(30000, 30002)),
            (Some(30003), AllocationError::PortOutOfRange(30000, 30002)),
        ];
        for (requested, want) in cases {
            assert_eq!(
                a.reserve("ns/b", &ports(vec![*requested]), false).err(),
                Some(Failed::Port(0, want.clone())),
                "{requested:?}"
            );
        }
        let (_, r) = a.reserve("ns/b", &ports(vec![None]), false).unwrap();
        r.keep();
        assert_eq!(
            a.reserve("ns/c", &ports(vec![None]), false).err(),
            Some(Failed::Port(0, AllocationError::Full))
        );
        assert_eq!(
            AllocationError::PortOutOfRange(30000, 32767).to_string(),
            "provided port is not in the valid range. The range of valid ports is 30000-32767"
        );
    }

    #[test]
    fn settle_releases_what_the_stored_service_no_longer_holds() {
        let a = small();
        let want = Request {
            ip: Some(None),
            ports: vec![None, None],
        };
        let (g, r) = a.reserve("ns/a", &want, false).unwrap();
        r.keep();
        assert_eq!(g.ports.len(), 2);
        assert!(g.ports.iter().all(|p| (30000..=30002).contains(p)));
        // Changed to ClusterIP: the node ports go, the IP stays.
        a.settle("ns/a", &[g.ip.unwrap()], &[]);
        assert_eq!(a.port_owner(g.ports[0]), None);
        assert_eq!(a.ip_owner(g.ip.unwrap()).as_deref(), Some("ns/a"));
        // Deleted: everything goes.
        a.settle("ns/a", &[], &[]);
        assert_eq!(a.ip_owner(g.ip.unwrap()), None);
        // A write in flight keeps what it reserved.
        let (g, r) = a.reserve("ns/a", &want, false).unwrap();
        a.settle("ns/a", &[], &[]);
        assert_eq!(a.ip_owner(g.ip.unwrap()).as_deref(), Some("ns/a"));
        r.keep();
    }

    #[test]
    fn restore_rebuilds_and_reports_clashes() {
        let a = small();
        assert!(a.restore("ns/a", &[ip("10.0.0.4")], &[30002]).is_empty());
        assert_eq!(
            a.restore("ns/b", &[ip("10.0.0.4")], &[]),
            vec!["10.0.0.4".to_owned()]
        );
        let taken = Request {
            ip: Some(Some(ip("10.0.0.4"))),
            ports: vec![],
        };
        assert!(a.reserve("ns/c", &taken, false).is_err());
        let (g, r) = a
            .reserve(
                "ns/c",
                &Request {
                    ip: None,
                    ports: vec![None, None],
                },
                false,
            )
            .unwrap();
        r.keep();
        let mut ports = g.ports;
        ports.sort();
        assert_eq!(ports, vec![30000, 30001]);
    }

    #[test]
    fn concurrent_reservations_never_share() {
        let a = ServiceAllocator::new(ServiceNetwork {
            cidr: Ipv4Cidr::parse("10.1.0.0/24").unwrap(),
            node_ports: 30000..=30100,
        });
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let a = a.clone();
                std::thread::spawn(move || {
                    (0..25)
                        .map(|i| {
                            let (g, r) = a
                                .reserve(
                                    &format!("ns/s{t}-{i}"),
                                    &Request {
                                        ip: Some(None),
                                        ports: vec![],
                                    },
                                    false,
                                )
                                .unwrap();
                            r.keep();
                            g.ip.unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<Ipv4Addr> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
    }
}
