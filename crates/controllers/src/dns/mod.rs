//! The cluster DNS of `imc server`: names of Services in the cluster domain answered from the
//! node's [`ServiceView`] ([`records::lookup`], as CoreDNS's `kubernetes` plugin), every other
//! name forwarded to the host's resolvers (as CoreDNS's `forward . /etc/resolv.conf`). Messages
//! are read and written with `hickory-proto`; the server loop (UDP and TCP, bounded) is here.

pub mod records;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::service_view::ServiceView;
use records::{Answer, Lookup, QueryType};

/// The TTL of every answer from the cluster (CoreDNS's `kubernetes` default).
const TTL: u32 = 5;
/// Questions answered at once at most; more wait (UDP: in the socket's buffer).
const MAX_IN_FLIGHT: usize = 256;
/// TCP connections open at once at most.
const MAX_TCP: usize = 64;
/// An idle TCP connection is closed after this.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// How long an upstream resolver has to answer a forwarded question.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest UDP message read (EDNS payloads beyond are not offered).
const MAX_UDP: usize = 4096;
/// The UDP payload a client without EDNS accepts.
const PLAIN_UDP: usize = 512;

/// The cluster DNS server: the view it answers from, its domain and where it forwards.
pub struct ClusterDns {
    view: ServiceView,
    domain: String,
    upstreams: Vec<SocketAddr>,
    slots: Arc<Semaphore>,
}

impl ClusterDns {
    /// A server for `domain` (e.g. `cluster.local`) answering from `view` and forwarding other
    /// names to `upstreams`.
    pub fn new(view: ServiceView, domain: &str, upstreams: Vec<SocketAddr>) -> Arc<Self> {
        Arc::new(ClusterDns {
            view,
            domain: domain.trim_end_matches('.').to_ascii_lowercase(),
            upstreams,
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        })
    }

    /// Listens on `addr` (UDP and TCP; the address may not exist yet: the pod bridge holding
    /// it appears with the first pod) and answers until the process ends.
    pub fn serve(self: &Arc<Self>, addr: SocketAddr) -> std::io::Result<()> {
        let udp = UdpSocket::from_std(udp_freebind(addr)?)?;
        let tcp = {
            let s = TcpSocket::new_v4()?;
            s.set_reuseaddr(true)?;
            rustix::net::sockopt::set_ip_freebind(&s, true)?;
            s.bind(addr)?;
            s.listen(128)?
        };
        let udp = Arc::new(udp);
        let me = self.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_UDP];
            loop {
                let Ok(permit) = me.slots.clone().acquire_owned().await else {
                    return;
                };
                let (n, peer) = match udp.recv_from(&mut buf).await {
                    Ok(got) => got,
                    Err(e) => {
                        debug!(error = %e, "dns: receiving");
                        continue;
                    }
                };
                let query = buf[..n].to_vec();
                let (me, udp) = (me.clone(), udp.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Some(reply) = me.answer(&query, true).await {
                        let _ = udp.send_to(&reply, peer).await;
                    }
                });
            }
        });
        let me = self.clone();
        let connections = Arc::new(Semaphore::new(MAX_TCP));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = connections.clone().acquire_owned().await else {
                    return;
                };
                let Ok((stream, _)) = tcp.accept().await else {
                    continue;
                };
                let me = me.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    me.serve_tcp(stream).await;
                });
            }
        });
        Ok(())
    }

    /// Answers the questions of one TCP connection (two-byte length before each message).
    async fn serve_tcp(&self, mut stream: TcpStream) {
        loop {
            let mut len = [0u8; 2];
            match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
                Ok(Ok(_)) => {}
                _ => return,
            }
            let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
            if tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut query))
                .await
                .is_err()
            {
                return;
            }
            let Some(reply) = self.answer(&query, false).await else {
                return;
            };
            let Ok(len) = u16::try_from(reply.len()) else {
                return;
            };
            if stream.write_all(&len.to_be_bytes()).await.is_err()
                || stream.write_all(&reply).await.is_err()
            {
                return;
            }
        }
    }

    /// The reply to the DNS message `query` (`None`: not even a header to answer to).
    pub async fn answer(&self, query: &[u8], udp: bool) -> Option<Vec<u8>> {
        let request = match Message::from_vec(query) {
            Ok(m) => m,
            Err(_) if query.len() >= 2 => {
                let id = u16::from_be_bytes([query[0], query[1]]);
                return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
                    .to_vec()
                    .ok();
            }
            Err(_) => return None,
        };
        if request.metadata.message_type != MessageType::Query {
            return None;
        }
        let refuse = |code| {
            let mut m = Message::error_msg(request.metadata.id, request.metadata.op_code, code);
            m.queries = request.queries.clone();
            m.to_vec().ok()
        };
        if request.metadata.op_code != OpCode::Query {
            return refuse(ResponseCode::NotImp);
        }
        let [question] = request.queries.as_slice() else {
            return refuse(ResponseCode::FormErr);
        };
        let qtype = match question.query_type() {
            RecordType::A | RecordType::ANY => QueryType::A,
            RecordType::SRV => QueryType::Srv,
            _ => QueryType::Other,
        };
        let name = question.name().to_ascii();
        let found = records::lookup(
            &name,
            qtype,
            &self.domain,
            &self.view.services.state(),
            &self.view.slices.state(),
        );
        let answers = match found {
            Lookup::Elsewhere => {
                return match self.forward(query, request.metadata.id, udp).await {
                    Some(reply) => Some(reply),
                    None => refuse(ResponseCode::ServFail),
                };
            }
            Lookup::NxDomain => None,
            Lookup::Records(r) => Some(r),
        };
        let mut reply = Message::response(request.metadata.id, OpCode::Query);
        reply.metadata = Metadata::response_from_request(&request.metadata);
        reply.metadata.authoritative = true;
        reply.metadata.recursion_available = true;
        reply.queries = request.queries.clone();
        match answers {
            None => reply.metadata.response_code = ResponseCode::NXDomain,
            Some(answers) => {
                for a in answers {
                    match record(a) {
                        Some(r) => {
                            reply.add_answer(r);
                        }
                        None => return refuse(ResponseCode::ServFail),
                    }
                }
            }
        }
        if reply.answers.is_empty()
            && let Some(soa) = self.soa()
        {
            reply.add_authority(soa);
        }
        let limit = match &request.edns {
            Some(e) => usize::from(e.max_payload()).clamp(PLAIN_UDP, MAX_UDP),
            None => PLAIN_UDP,
        };
        if let Some(e) = &request.edns {
            let mut edns = Edns::new();
            edns.set_max_payload(e.max_payload().clamp(PLAIN_UDP as u16, MAX_UDP as u16));
            reply.set_edns(edns);
        }
        let bytes = reply.to_vec().ok()?;
        if udp && bytes.len() > limit {
            // The client asks again over TCP.
            let mut cut = reply.truncate();
            cut.metadata.truncation = true;
            return cut.to_vec().ok();
        }
        Some(bytes)
    }

    /// The cluster domain's SOA, sent with negative answers (CoreDNS's values).
    fn soa(&self) -> Option<Record> {
        let zone = Name::from_ascii(format!("{}.", self.domain)).ok()?;
        let mname = Name::from_ascii(format!("ns.dns.{}.", self.domain)).ok()?;
        let rname = Name::from_ascii(format!("hostmaster.{}.", self.domain)).ok()?;
        Some(Record::from_rdata(
            zone,
            TTL,
            RData::SOA(SOA::new(mname, rname, 1, 7200, 1800, 86400, TTL)),
        ))
    }

    /// Asks each upstream resolver in turn over UDP; the first reply with the question's id.
    /// A truncated reply goes back as it is to a UDP client (which asks again over TCP); for
    /// a TCP client the same upstream is asked again over TCP.
    async fn forward(&self, query: &[u8], id: u16, udp: bool) -> Option<Vec<u8>> {
        for upstream in &self.upstreams {
            let attempt = async {
                let local: SocketAddr = match upstream {
                    SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
                    SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
                };
                let socket = UdpSocket::bind(local).await.ok()?;
                socket.connect(upstream).await.ok()?;
                socket.send(query).await.ok()?;
                let mut buf = vec![0u8; MAX_UDP];
                loop {
                    let n = socket.recv(&mut buf).await.ok()?;
                    if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
                        buf.truncate(n);
                        return Some(buf);
                    }
                }
            };
            let reply = match tokio::time::timeout(UPSTREAM_TIMEOUT, attempt).await {
                Ok(Some(reply)) => reply,
                _ => {
                    debug!(upstream = %upstream, "dns: upstream did not answer");
                    continue;
                }
            };
            let truncated = reply.get(2).is_some_and(|flags| flags & 0x02 != 0);
            if udp || !truncated {
                return Some(reply);
            }
            match tokio::time::timeout(UPSTREAM_TIMEOUT, forward_tcp(*upstream, query, id)).await {
                Ok(Some(full)) => return Some(full),
                _ => debug!(upstream = %upstream, "dns: upstream did not answer over tcp"),
            }
        }
        None
    }
}

/// Asks `upstream` over TCP; its reply if it carries the question's `id`.
async fn forward_tcp(upstream: SocketAddr, query: &[u8], id: u16) -> Option<Vec<u8>> {
    let mut stream = TcpStream::connect(upstream).await.ok()?;
    let len = u16::try_from(query.len()).ok()?;
    stream.write_all(&len.to_be_bytes()).await.ok()?;
    stream.write_all(query).await.ok()?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.ok()?;
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut reply).await.ok()?;
    (reply.len() >= 2 && u16::from_be_bytes([reply[0], reply[1]]) == id).then_some(reply)
}

/// A UDP socket bound to `addr` with `IP_FREEBIND` (the address may not exist yet).
fn udp_freebind(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use rustix::net::{AddressFamily, SocketType, bind, ipproto, socket};
    let fd = socket(AddressFamily::INET, SocketType::DGRAM, Some(ipproto::UDP))?;
    rustix::net::sockopt::set_socket_reuseaddr(&fd, true)?;
    rustix::net::sockopt::set_ip_freebind(&fd, true)?;
    bind(&fd, &addr)?;
    let socket = std::net::UdpSocket::from(fd);
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// A wire record of an answer.
fn record(a: Answer) -> Option<Record> {
    let name = |n: &str| Name::from_ascii(format!("{n}.")).ok();
    Some(match a {
        Answer::A(n, ip) => Record::from_rdata(name(&n)?, TTL, RData::A(A(ip))),
        Answer::Cname(n, target) => {
            Record::from_rdata(name(&n)?, TTL, RData::CNAME(CNAME(name(&target)?)))
        }
        Answer::Srv(n, weight, port, target) => Record::from_rdata(
            name(&n)?,
            TTL,
            RData::SRV(SRV::new(0, weight, port, name(&target)?)),
        ),
    })
}

/// The resolvers of a `resolv.conf` text, port 53, without `exclude` (the cluster DNS's own
/// address: forwarding to it would loop).
pub fn upstreams(resolv_conf: &str, exclude: IpAddr) -> Vec<SocketAddr> {
    let found: Vec<SocketAddr> = resolv_conf
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
        })
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .filter(|ip| *ip != exclude)
        .map(|ip| SocketAddr::new(ip, 53))
        .collect();
    if found.is_empty() {
        warn!("no nameserver in the host's resolv.conf: names outside the cluster will fail");
    }
    found
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::Query;
    use k8s_openapi::api::core::v1::Service;
    use kube::runtime::{reflector, watcher};

    use super::*;

    /// A server answering from `services` (no slices), forwarding to `upstreams`.
    fn server(services: Vec<Service>, upstreams: Vec<SocketAddr>) -> Arc<ClusterDns> {
        let (store, mut writer) = reflector::store();
        for s in services {
            writer.apply_watcher_event(&watcher::Event::Apply(s));
        }
        let (slices, _w) = reflector::store();
        let view = ServiceView {
            services: store,
            slices,
            changed: Arc::new(tokio::sync::Notify::new()),
        };
        ClusterDns::new(view, "cluster.local", upstreams)
    }

    fn question(name: &str, qtype: RecordType) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 4242;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        m.to_vec().unwrap()
    }

    #[tokio::test]
    async fn answers_on_the_wire_and_forwards_other_names() {
        // An upstream resolver on loopback answering every question with 192.0.2.7; over UDP,
        // names starting with "big" get a truncated reply (and the full one over TCP).
        let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let upstream_addr = upstream.local_addr().unwrap();
        let full = |query: &[u8]| {
            let q = Message::from_vec(query).unwrap();
            let mut r = Message::response(q.metadata.id, OpCode::Query);
            r.queries = q.queries.clone();
            r.add_answer(Record::from_rdata(
                q.queries[0].name().clone(),
                60,
                RData::A(A("192.0.2.7".parse().unwrap())),
            ));
            r
        };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, peer)) = upstream.recv_from(&mut buf).await {
                let mut r = full(&buf[..n]);
                if r.queries[0].name().to_ascii().starts_with("big") {
                    r = r.truncate();
                    r.metadata.truncation = true;
                }
                let _ = upstream.send_to(&r.to_vec().unwrap(), peer).await;
            }
        });
        let tcp = tokio::net::TcpListener::bind(upstream_addr).await.unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = tcp.accept().await {
                let mut len = [0u8; 2];
                s.read_exact(&mut len).await.unwrap();
                let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
                s.read_exact(&mut q).await.unwrap();
                let r = full(&q).to_vec().unwrap();
                s.write_all(&(r.len() as u16).to_be_bytes()).await.unwrap();
                s.write_all(&r).await.unwrap();
            }
        });
        let web: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.50"}}))
        .unwrap();
        let dns = server(vec![web], vec![upstream_addr]);
        let reply = |bytes: Vec<u8>| Message::from_vec(&bytes).unwrap();

        let r = reply(
            dns.answer(
                &question("web.default.svc.cluster.local.", RecordType::A),
                true,
            )
            .await
            .unwrap(),
        );
        assert_eq!(r.metadata.id, 4242);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.metadata.authoritative);
        assert_eq!(r.answers.len(), 1);
        assert_eq!(
            r.answers[0].data,
            RData::A(A("10.96.0.50".parse().unwrap()))
        );

        let r = reply(
            dns.answer(
                &question("web.default.svc.cluster.local.", RecordType::AAAA),
                true,
            )
            .await
            .unwrap(),
        );
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(
            r.answers.is_empty() && r.authorities.len() == 1,
            "no data, with the SOA"
        );

        let r = reply(
            dns.answer(
                &question("nope.default.svc.cluster.local.", RecordType::A),
                true,
            )
            .await
            .unwrap(),
        );
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);

        let r = reply(
            dns.answer(&question("example.org.", RecordType::A), true)
                .await
                .unwrap(),
        );
        assert_eq!(r.metadata.id, 4242);
        assert_eq!(r.answers[0].data, RData::A(A("192.0.2.7".parse().unwrap())));

        // A truncated upstream reply: passed on to a UDP client, asked again over TCP for a
        // TCP client.
        let r = reply(
            dns.answer(&question("big.example.org.", RecordType::A), true)
                .await
                .unwrap(),
        );
        assert!(r.metadata.truncation && r.answers.is_empty(), "{r:?}");
        let r = reply(
            dns.answer(&question("big.example.org.", RecordType::A), false)
                .await
                .unwrap(),
        );
        assert!(!r.metadata.truncation, "{r:?}");
        assert_eq!(r.answers[0].data, RData::A(A("192.0.2.7".parse().unwrap())));

        // No upstream answering: SERVFAIL, not silence.
        let dead = server(vec![], vec![]);
        let r = reply(
            dead.answer(&question("example.org.", RecordType::A), true)
                .await
                .unwrap(),
        );
        assert_eq!(r.metadata.response_code, ResponseCode::ServFail);

        // Garbage with an id: FORMERR; without one: nothing.
        let r = reply(dns.answer(&[0x12, 0x34, 0xff], true).await.unwrap());
        assert_eq!(
            (r.metadata.id, r.metadata.response_code),
            (0x1234, ResponseCode::FormErr)
        );
        assert!(dns.answer(&[0x12], true).await.is_none());
    }

    #[test]
    fn upstreams_are_the_hosts_nameservers_but_ours() {
        let text = "# x\nnameserver 10.88.0.1\nnameserver 192.0.2.53\nsearch lan\nnameserver fd00::53\nnameserver bogus\n";
        let got = upstreams(text, "10.88.0.1".parse().unwrap());
        assert_eq!(
            got,
            vec![
                "192.0.2.53:53".parse::<SocketAddr>().unwrap(),
                "[fd00::53]:53".parse().unwrap()
            ]
        );
    }
}
