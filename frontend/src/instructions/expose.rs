//! EXPOSE port specs, as BuildKit's `dockerfile2llb/convert_expose.go`:
//! `port[/proto]`, ranges, and the legacy `ip:host:container` forms (whose
//! host parts are dropped).

use std::net::IpAddr;

/// Lint findings while parsing a spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExposeFindings {
    /// The protocol was not lower case (ExposeProtoCasing).
    pub proto_casing: bool,
    /// An IP or host port was given (ExposeInvalidFormat).
    pub invalid_format: bool,
}

/// Expands one spec into `"<port>/<proto>"` keys.
pub fn parse_port(raw: &str, findings: &mut ExposeFindings) -> Result<Vec<String>, String> {
    let (start, end, proto) = port_range(raw, findings)?;
    Ok((start..=end).map(|p| format!("{p}/{proto}")).collect())
}

/// Checks one spec (what it finds goes in `findings`) without expanding
/// its range.
pub fn check_port(raw: &str, findings: &mut ExposeFindings) -> Result<(), String> {
    port_range(raw, findings).map(|_| ())
}

/// One spec's container ports and protocol (lower case).
fn port_range(raw: &str, findings: &mut ExposeFindings) -> Result<(u32, u32, String), String> {
    let (ip, host_port, container_port) = split_parts(raw);
    let (proto, container_port) = split_proto_port(container_port)
        .map_err(|e| format!("invalid port: {}: {e}", crate::quote::go_quote(raw)))?;
    if proto != proto.to_lowercase() {
        findings.proto_casing = true;
    }
    if !ip.is_empty() || !host_port.is_empty() {
        findings.invalid_format = true;
    }
    let mut ip = ip.to_string();
    if ip.starts_with('[') {
        ip = ip
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .filter(|s| !s.contains(['[', ']']))
            .map(str::to_string)
            .ok_or_else(|| {
                format!("invalid IP address {ip}: address {ip}:: missing port in address")
            })?;
    }
    if !ip.is_empty() && ip.parse::<IpAddr>().is_err() {
        return Err(format!("invalid IP address: {ip}"));
    }
    let (start, end) = parse_port_range(container_port)
        .map_err(|_| format!("invalid containerPort: {container_port}"))?;
    if !host_port.is_empty() {
        let (hs, he) =
            parse_port_range(host_port).map_err(|_| format!("invalid hostPort: {host_port}"))?;
        if end - start != he - hs && end != start {
            return Err(format!(
                "invalid ranges specified for container and host Ports: {container_port} and {host_port}"
            ));
        }
    }
    Ok((start, end, proto.to_lowercase()))
}

/// Expands a list of specs, in order, each port once (BuildKit's
/// `nat.ParsePortSpecs` gives a set): `EXPOSE 1-65535` written five
/// thousand times on a line is 65,535 ports, not 327 million.
pub fn parse_ports(specs: &[String], findings: &mut ExposeFindings) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut seen: Vec<(String, Vec<bool>)> = Vec::new();
    for spec in specs {
        let (start, end, proto) = port_range(spec, findings)?;
        let at = match seen.iter().position(|(p, _)| *p == proto) {
            Some(at) => at,
            None => {
                seen.push((proto.clone(), vec![false; 65536]));
                seen.len() - 1
            }
        };
        let ports = &mut seen[at].1;
        for port in start..=end {
            if !std::mem::replace(&mut ports[port as usize], true) {
                out.push(format!("{port}/{proto}"));
            }
        }
    }
    Ok(out)
}

fn split_parts(raw: &str) -> (&str, &str, &str) {
    let parts: Vec<&str> = raw.split(':').collect();
    match parts.len() {
        1 => ("", "", parts[0]),
        2 => ("", parts[0], parts[1]),
        3 => (parts[0], parts[1], parts[2]),
        n => {
            let ip_len: usize = parts[..n - 2].iter().map(|p| p.len() + 1).sum::<usize>() - 1;
            (&raw[..ip_len], parts[n - 2], parts[n - 1])
        }
    }
}

fn split_proto_port(raw: &str) -> Result<(&str, &str), String> {
    let (port, proto) = raw.split_once('/').unwrap_or((raw, ""));
    if port.is_empty() {
        return Err("no port specified".into());
    }
    match proto.to_lowercase().as_str() {
        "" => Ok(("tcp", port)),
        "tcp" | "udp" | "sctp" => Ok((proto, port)),
        _ => Err(format!("invalid proto: {proto}")),
    }
}

fn parse_port_range(ports: &str) -> Result<(u32, u32), String> {
    if ports.is_empty() {
        return Err("empty string specified for ports".into());
    }
    let (start, end) = match ports.split_once('-') {
        Some((s, e)) => (s, Some(e)),
        None => (ports, None),
    };
    let start_port = parse_port_number(start)?;
    let Some(end) = end.filter(|e| *e != start) else {
        return Ok((start_port, start_port));
    };
    let end_port = parse_port_number(end)?;
    if end_port < start_port {
        return Err(format!("invalid port range: {ports}"));
    }
    Ok((start_port, end_port))
}

fn parse_port_number(raw: &str) -> Result<u32, String> {
    let n: i64 = raw.parse().map_err(|_| "invalid syntax".to_string())?;
    if !(0..=65535).contains(&n) {
        return Err("value out of range (0–65535)".into());
    }
    Ok(n as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_port_once_in_first_order() {
        let specs: Vec<String> = ["80", "1-3", "2/udp", "80/TCP", "3", "2/udp"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut f = ExposeFindings::default();
        assert_eq!(
            parse_ports(&specs, &mut f).unwrap(),
            ["80/tcp", "1/tcp", "2/tcp", "3/tcp", "2/udp"]
        );
        assert!(f.proto_casing);
        let whole = vec!["1-65535".to_string(); 1000];
        assert_eq!(parse_ports(&whole, &mut f).unwrap().len(), 65535);
    }
}
