//! Where a connection that iptables or nftables redirected to the outbound listener was
//! going (transparent interception): the original destination conntrack recorded, read
//! with `SO_ORIGINAL_DST` (IPv4) or `IP6T_SO_ORIGINAL_DST` (IPv6).

/// Where a connection redirected to this proxy by iptables or nftables (`REDIRECT`, or DNAT)
/// was going: the original destination conntrack recorded. `None` for a connection made to
/// the listener itself.
pub fn original_destination(stream: &tokio::net::TcpStream) -> Option<std::net::SocketAddr> {
    use nix::sys::socket::{getsockopt, sockopt};
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
    let local = stream.local_addr().ok()?;
    let original = match local {
        SocketAddr::V4(_) => {
            let address = getsockopt(stream, sockopt::OriginalDst).ok()?;
            SocketAddr::from((
                Ipv4Addr::from(u32::from_be(address.sin_addr.s_addr)),
                u16::from_be(address.sin_port),
            ))
        }
        SocketAddr::V6(_) => {
            let address = getsockopt(stream, sockopt::Ip6tOriginalDst).ok()?;
            SocketAddr::from((
                Ipv6Addr::from(address.sin6_addr.s6_addr),
                u16::from_be(address.sin6_port),
            ))
        }
    };
    (original != local).then_some(original)
}
