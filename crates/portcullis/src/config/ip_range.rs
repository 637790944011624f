//! Address ranges as the config file and the environment write them (`allow_ips`,
//! `deny_ips`, `trusted_proxies`): read the way client addresses are compared, so that a
//! range that passes `check` can match.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Deserializer};

/// A range written `address/length`, or a bare address (that address alone). An IPv4-mapped
/// IPv6 range (`::ffff:10.0.0.0/104`) is read as the IPv4 range it maps (`10.0.0.0/8`):
/// client addresses are compared in their IPv4 form, so the mapped form would match none.
/// An IPv4 address with a leading zero in a part (`010.0.0.1`: octal to some readers,
/// decimal to others) is refused, as it is in `X-Forwarded-For`.
pub fn parse_ip_range(text: &str) -> Result<IpNet, String> {
    // The value is not repeated: the config's errors point at it, and clap's quote it.
    let refused = || {
        "not an address or an address range (e.g. 10.0.0.0/8, 2001:db8::/32, 192.0.2.7)".to_owned()
    };
    let (address, length) = match text.split_once('/') {
        Some((address, length)) => (address, Some(length)),
        None => (text, None),
    };
    // The standard parser refuses leading zeros in IPv4 parts, which `ipnet`'s accepts.
    let address: IpAddr = address.parse().map_err(|_| refused())?;
    let range = match length {
        Some(length) if !length.is_empty() && length.bytes().all(|b| b.is_ascii_digit()) => {
            let length: u8 = length.parse().map_err(|_| refused())?;
            IpNet::new(address, length).map_err(|_| refused())?
        }
        Some(_) => return Err(refused()),
        None => IpNet::from(address),
    };
    Ok(match range {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::V4(Ipv4Net::new(v4, v6.prefix_len() - 96).map_err(|_| refused())?),
            None => range,
        },
        _ => range,
    })
}

/// Deserializes a list of ranges with [`parse_ip_range`].
pub fn ip_ranges<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
    Vec::<String>::deserialize(deserializer)?
        .iter()
        .map(|text| parse_ip_range(text).map_err(serde::de::Error::custom))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(text: &str) -> String {
        parse_ip_range(text).unwrap().to_string()
    }

    #[test]
    fn ranges_and_bare_addresses_are_read_as_clients_are_compared() {
        assert_eq!(range("10.0.0.0/8"), "10.0.0.0/8");
        assert_eq!(range("2001:db8::/32"), "2001:db8::/32");
        // A bare address is that address alone.
        assert_eq!(range("192.0.2.7"), "192.0.2.7/32");
        assert_eq!(range("2001:db8::1"), "2001:db8::1/128");
        // IPv4-mapped forms are their IPv4 ranges; a wider IPv6 range stays as it is.
        assert_eq!(range("::ffff:127.0.0.3/128"), "127.0.0.3/32");
        assert_eq!(range("::ffff:127.0.0.0/120"), "127.0.0.0/24");
        assert_eq!(range("::ffff:10.0.0.1"), "10.0.0.1/32");
        assert_eq!(range("::/0"), "::/0");
    }

    #[test]
    fn what_is_not_a_range_is_refused_by_name() {
        for bad in [
            "010.0.0.1/32",
            "10.0.0.1/33",
            "10.0.0.1/",
            "10.0.0.1/+8",
            "10.0.0.1/8/8",
            "2001:db8::/129",
            "fe80::1%eth0",
            "example.com",
            "",
        ] {
            let error = parse_ip_range(bad).map(|range| range.to_string());
            assert_eq!(
                error
                    .as_deref()
                    .map_err(|e| e.starts_with("not an address")),
                Err(true),
                "{bad}"
            );
        }
    }
}
