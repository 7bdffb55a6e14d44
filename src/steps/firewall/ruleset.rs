//! The firewall config rendered as nftables text: one `table inet olboot`.
//!
//! The text starts with `table inet olboot {}` and `delete table inet olboot`, then defines the
//! table. `nft -f` runs a file as one transaction, so loading it replaces olboot's table in one
//! step whether or not it existed (the empty declaration makes the `delete` valid on a fresh
//! boot), leaves every other table alone, and on any error leaves the old table as it was.
//! The same text is the boot-time file, so loading it twice never duplicates a rule.
//!
//! Each config set becomes two named interval sets, `NAME_v4` and `NAME_v6` (one nft set holds
//! one address type); empty ones are left out, and so are the rules that would use them. Every
//! allow rule carries a comment naming its `allow[i]` entry, which `nft list` shows too.

use crate::config::{self, Cidr, PortRange};
use std::fmt::Write;
use std::net::IpAddr;

/// The table olboot owns, and the only one it ever changes.
pub const TABLE: &str = "inet olboot";
/// Its family and name, as `nft list table` takes them.
pub const FAMILY: &str = "inet";
/// See [`FAMILY`].
pub const NAME: &str = "olboot";

/// ICMPv6 that IPv6 cannot work without: errors, echo, neighbour discovery and MLD. Neighbour
/// discovery and MLD are not connections (conntrack leaves them untracked), so they are
/// accepted by type, not by state.
const ICMPV6: &str = "echo-request, destination-unreachable, packet-too-big, time-exceeded, \
                      parameter-problem, nd-router-advert, nd-neighbor-solicit, \
                      nd-neighbor-advert, mld-listener-query, mld-listener-report, \
                      mld2-listener-report";
/// ICMP for IPv4: echo and the errors that path MTU discovery and diagnostics need.
const ICMP: &str = "echo-request, destination-unreachable, time-exceeded, parameter-problem";
/// The kernel keeps at most 128 bytes of a rule comment.
const COMMENT_MAX: usize = 120;

/// The networks of one config set, split by family, sorted, with networks that another entry
/// already covers removed (a named interval set refuses overlapping elements).
struct Split {
    v4: Vec<Cidr>,
    v6: Vec<Cidr>,
}

impl Split {
    fn of(nets: &[Cidr]) -> Split {
        let (v4, v6): (Vec<Cidr>, Vec<Cidr>) = nets.iter().partition(|c| c.addr.is_ipv4());
        Split {
            v4: minimal(v4),
            v6: minimal(v6),
        }
    }
}

fn bits(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u32::from(a).into(),
        IpAddr::V6(a) => a.into(),
    }
}

/// Whether network `outer` contains network `inner` (same family).
fn covers(outer: &Cidr, inner: &Cidr) -> bool {
    let width = if outer.addr.is_ipv4() { 32 } else { 128 };
    if outer.prefix > inner.prefix {
        return false;
    }
    let host = width - u32::from(outer.prefix);
    let mask = if host >= 128 { 0 } else { !0u128 << host };
    bits(inner.addr) & mask == bits(outer.addr) & mask
}

/// Sorted, deduplicated, no network inside another. Aligned networks are either nested or
/// disjoint, so after sorting by start (wider first) only the last kept one can cover the next.
fn minimal(mut nets: Vec<Cidr>) -> Vec<Cidr> {
    nets.sort_by_key(|c| (bits(c.addr), c.prefix));
    let mut out: Vec<Cidr> = Vec::new();
    for n in nets {
        if out.last().is_some_and(|last| covers(last, &n)) {
            continue;
        }
        out.push(n);
    }
    out
}

/// A set element: a bare address for a single host, `net/len` otherwise.
fn element(c: &Cidr) -> String {
    let full = if c.addr.is_ipv4() { 32 } else { 128 };
    if c.prefix == full {
        c.addr.to_string()
    } else {
        c.to_string()
    }
}

/// Port ranges sorted, with overlapping ones merged.
fn port_ranges(ports: &[PortRange]) -> Vec<PortRange> {
    let mut v = ports.to_vec();
    v.sort_by_key(|p| (p.lo, p.hi));
    let mut out: Vec<PortRange> = Vec::new();
    for p in v {
        match out.last_mut() {
            Some(last) if p.lo <= last.hi => last.hi = last.hi.max(p.hi),
            _ => out.push(p),
        }
    }
    out
}

/// The ports as one nft expression: `22`, `8000-8100` or `{ 80, 443 }`.
fn ports_expr(ports: &[PortRange]) -> String {
    match ports {
        [one] => one.to_string(),
        many => {
            let items: Vec<String> = many.iter().map(|p| p.to_string()).collect();
            format!("{{ {} }}", items.join(", "))
        }
    }
}

/// A rule comment, cut to what the kernel keeps.
fn comment(text: String) -> String {
    if text.len() <= COMMENT_MAX {
        return format!("comment \"{text}\"");
    }
    let mut cut = COMMENT_MAX - 3;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("comment \"{}...\"", &text[..cut])
}

/// One allow rule matched from one source (a set's one family, or anywhere).
struct Source {
    /// `ip saddr @admin_v4 ` or empty for anywhere.
    matcher: String,
    /// What the comment says it comes from.
    what: String,
}

/// The sources of allow rule `a`: one per non-empty family of each `from` set, one per
/// container bridge for `containers`, or anywhere.
fn sources(a: &config::Allow, sets: &[(String, Split)], bridges: &[String]) -> Vec<Source> {
    if a.from.is_empty() {
        return vec![Source {
            matcher: String::new(),
            what: "anywhere".into(),
        }];
    }
    let mut out = Vec::new();
    for name in &a.from {
        if name == config::CONTAINERS {
            // By the interface the traffic comes in on: whatever the networks' addresses.
            out.extend(bridges.iter().map(|b| Source {
                matcher: format!("iifname \"{b}\" "),
                what: name.clone(),
            }));
            continue;
        }
        let Some((_, split)) = sets.iter().find(|(n, _)| n == name) else {
            continue;
        };
        if !split.v4.is_empty() {
            out.push(Source {
                matcher: format!("ip saddr @{name}_v4 "),
                what: name.clone(),
            });
        }
        if !split.v6.is_empty() {
            out.push(Source {
                matcher: format!("ip6 saddr @{name}_v6 "),
                what: name.clone(),
            });
        }
    }
    out
}

/// Allow rules of the config that match no address at all (every `from` set is empty): worth
/// a warning, since the port stays closed.
pub fn empty_rules(cfg: &config::Firewall) -> Vec<String> {
    let sets = split_sets(cfg);
    let bridges = cfg.bridges();
    cfg.allow
        .iter()
        .enumerate()
        .filter(|(_, a)| sources(a, &sets, &bridges).is_empty())
        .map(|(i, a)| {
            format!(
                "allow[{i}] ({} {}) allows nothing: its sets ({}) hold no address",
                a.proto,
                ports_expr(&port_ranges(&a.port.0)),
                a.from.join(", ")
            )
        })
        .collect()
}

fn split_sets(cfg: &config::Firewall) -> Vec<(String, Split)> {
    cfg.sets
        .iter()
        .map(|(n, nets)| (n.clone(), Split::of(nets)))
        .collect()
}

/// Render `cfg` as the complete file: header, replace prologue, table.
pub fn render(cfg: &config::Firewall) -> String {
    let sets = split_sets(cfg);
    let bridges = cfg.bridges();
    let mut s = String::new();
    s.push_str(
        "# olboot's firewall, written by `olboot apply` from its config: change the config, not\n\
         # this file. Loading it (`nft -f`, at boot by olboot-firewall.service) replaces table\n\
         # inet olboot in one transaction and leaves every other table alone.\n",
    );
    let _ = writeln!(s, "table {TABLE} {{}}");
    let _ = writeln!(s, "delete table {TABLE}");
    let _ = writeln!(s, "table {TABLE} {{");
    render_sets(&mut s, &sets);
    render_input(&mut s, cfg, &sets, &bridges);
    render_forward(&mut s, cfg, &sets, &bridges);
    s.push_str("}\n");
    s
}

/// The named address sets, two per config set (one per family), empty ones left out.
fn render_sets(s: &mut String, sets: &[(String, Split)]) {
    for (name, split) in sets {
        for (suffix, ty, nets) in [
            ("v4", "ipv4_addr", &split.v4),
            ("v6", "ipv6_addr", &split.v6),
        ] {
            if nets.is_empty() {
                continue;
            }
            let _ = writeln!(s, "\tset {name}_{suffix} {{");
            let _ = writeln!(s, "\t\ttype {ty}");
            let _ = writeln!(s, "\t\tflags interval");
            let _ = writeln!(s, "\t\telements = {{");
            for n in nets {
                let _ = writeln!(s, "\t\t\t{},", element(n));
            }
            let _ = writeln!(s, "\t\t}}");
            let _ = writeln!(s, "\t}}");
            s.push('\n');
        }
    }
}

/// Traffic to the host itself: loopback, established, ICMP essentials, the allow rules.
fn render_input(
    s: &mut String,
    cfg: &config::Firewall,
    sets: &[(String, Split)],
    bridges: &[String],
) {
    s.push_str("\tchain input {\n");
    s.push_str("\t\ttype filter hook input priority filter; policy drop;\n");
    s.push_str("\t\tiif \"lo\" accept\n");
    s.push_str("\t\tct state established,related accept\n");
    s.push_str("\t\tct state invalid drop\n");
    let _ = writeln!(s, "\t\ticmp type {{ {ICMP} }} accept");
    let _ = writeln!(s, "\t\ticmpv6 type {{ {ICMPV6} }} accept");
    allow_rules(s, cfg, sets, bridges, |src, proto, expr, _| {
        vec![format!("{}{proto} dport {expr}", src.matcher)]
    });
    s.push_str("\t}\n\n");
}

/// One line per allow rule, source and whatever `matches` makes of them (each ends in
/// `accept` and the rule's comment).
fn allow_rules(
    s: &mut String,
    cfg: &config::Firewall,
    sets: &[(String, Split)],
    bridges: &[String],
    matches: impl Fn(&Source, &config::Proto, &str, &[PortRange]) -> Vec<String>,
) {
    for (i, a) in cfg.allow.iter().enumerate() {
        let ports = port_ranges(&a.port.0);
        let expr = ports_expr(&ports);
        for src in sources(a, sets, bridges) {
            let note = comment(format!("allow[{i}]: {} {expr} from {}", a.proto, src.what));
            for m in matches(&src, &a.proto, &expr, &ports) {
                let _ = writeln!(s, "\t\t{m} accept {note}");
            }
        }
    }
}

/// Forwarded traffic: the allow rules for new connections into the container networks, by
/// DNAT (published ports) or routed straight to a container's address.
///
/// Docker publishes a container port by DNAT in prerouting; the connection then passes the
/// forward hook, never input: the allow rules apply to the port the client asked for (`ct
/// original proto-dst`), and any other DNAT'd new connection is dropped. A neighbour that
/// routes a container network through this host reaches containers without DNAT (Docker
/// before 28 accepts that for every published container port); such new connections into a
/// container bridge from anywhere but a container bridge obey the same allow rules, by the
/// container's port. Container egress, container-to-container traffic and replies are not
/// olboot's business (Docker's own chains decide). Priority: before Docker's forward chains
/// (iptables-nft `filter FORWARD` and Docker 29's nftables tables, both at 0); a drop in any
/// base chain is final, and an accept here does not override a drop there.
fn render_forward(
    s: &mut String,
    cfg: &config::Firewall,
    sets: &[(String, Split)],
    bridges: &[String],
) {
    s.push_str("\tchain forward {\n");
    s.push_str("\t\ttype filter hook forward priority filter - 10; policy accept;\n");
    s.push_str(
        "\t\tct state new ct status dnat jump published comment \"published ports (DNAT): the allow rules\"\n",
    );
    for b in bridges {
        let _ = writeln!(
            s,
            "\t\tct state new oifname \"{b}\" jump routed comment \"routed into a container network: the allow rules\""
        );
    }
    s.push_str("\t}\n\n");
    s.push_str("\tchain published {\n");
    allow_rules(s, cfg, sets, bridges, |src, proto, _, ports| {
        // One rule per port or range: `ct original proto-dst` with an anonymous set works,
        // but nft 1.0 lists such a set as `[invalid type]`.
        ports
            .iter()
            .map(|p| {
                format!(
                    "meta l4proto {proto} ct original proto-dst {p} {}",
                    src.matcher
                )
            })
            .map(|m| m.trim_end().to_string())
            .collect()
    });
    s.push_str("\t\tdrop\n");
    s.push_str("\t}\n\n");
    s.push_str("\tchain routed {\n");
    for b in bridges {
        let _ = writeln!(
            s,
            "\t\tiifname \"{b}\" return comment \"from a container: Docker's rules decide\""
        );
    }
    allow_rules(s, cfg, sets, bridges, |src, proto, expr, _| {
        vec![format!("{}{proto} dport {expr}", src.matcher)]
    });
    s.push_str("\t\tdrop\n");
    s.push_str("\t}\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn fw(yaml: &str) -> config::Firewall {
        let text = format!("version: 1\nfirewall:\n{yaml}");
        Config::parse("test.yaml", &text)
            .and_then(|c| c.for_host("h"))
            .expect("valid config")
            .firewall
            .expect("firewall")
    }

    fn cidr(s: &str) -> Cidr {
        Cidr::parse(s).expect("cidr")
    }

    #[test]
    fn nested_networks_are_dropped_and_sorted() {
        let m = minimal(vec![
            cidr("10.1.2.3"),
            cidr("192.168.0.0/16"),
            cidr("10.0.0.0/8"),
            cidr("10.1.0.0/16"),
            cidr("10.0.0.0/8"),
            cidr("172.16.0.0/12"),
        ]);
        let s: Vec<String> = m.iter().map(element).collect();
        assert_eq!(s, ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]);
        let m = minimal(vec![
            cidr("2620:0:9c0::/48"),
            cidr("2620:0:9c0:1::5"),
            cidr("::/0"),
        ]);
        assert_eq!(m.iter().map(element).collect::<Vec<_>>(), ["::/0"]);
        let adjacent = minimal(vec![cidr("10.0.0.128/25"), cidr("10.0.0.0/25")]);
        assert_eq!(adjacent.len(), 2);
    }

    #[test]
    fn ports_are_merged_and_written_as_nft_expects() {
        let p = |lo, hi| PortRange { lo, hi };
        let merged = port_ranges(&[p(443, 443), p(80, 80), p(8000, 8100), p(8080, 8080)]);
        assert_eq!(ports_expr(&merged), "{ 80, 443, 8000-8100 }");
        assert_eq!(ports_expr(&port_ranges(&[p(22, 22), p(22, 22)])), "22");
        assert_eq!(ports_expr(&[p(1, 65535)]), "1-65535");
    }

    #[test]
    fn renders_sets_input_and_published_rules() {
        let cfg = fw("  sets:\n    admin: [207.241.224.0/20, \"2620:0:9c0::/48\", 207.241.225.7]\n    web: [10.0.1.11, 10.0.1.12]\n  allow:\n    - { port: 22, from: admin }\n    - { port: [443, 80] }\n    - { port: 11211, proto: udp, from: [web, admin] }\n");
        let r = render(&cfg);
        assert!(r.starts_with("# olboot's firewall"));
        let body: Vec<&str> = r.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            &body[..3],
            [
                "table inet olboot {}",
                "delete table inet olboot",
                "table inet olboot {"
            ]
        );
        assert!(r.contains(
            "\tset admin_v4 {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = {\n\t\t\t207.241.224.0/20,\n\t\t}\n\t}\n"
        ));
        assert!(r.contains("\t\t\t2620:0:9c0::/48,\n"));
        assert!(r.contains("\tset web_v4 {"));
        assert!(!r.contains("web_v6"), "an empty family gets no set");
        let rules = [
            "ip saddr @admin_v4 tcp dport 22 accept comment \"allow[0]: tcp 22 from admin\"",
            "ip6 saddr @admin_v6 tcp dport 22 accept comment \"allow[0]: tcp 22 from admin\"",
            "tcp dport { 80, 443 } accept comment \"allow[1]: tcp { 80, 443 } from anywhere\"",
            "ip saddr @web_v4 udp dport 11211 accept comment \"allow[2]: udp 11211 from web\"",
            "ip6 saddr @admin_v6 udp dport 11211 accept comment \"allow[2]: udp 11211 from admin\"",
            "meta l4proto tcp ct original proto-dst 22 ip saddr @admin_v4 accept comment \"allow[0]: tcp 22 from admin\"",
            "meta l4proto tcp ct original proto-dst 80 accept comment \"allow[1]: tcp { 80, 443 } from anywhere\"",
            "meta l4proto tcp ct original proto-dst 443 accept comment \"allow[1]: tcp { 80, 443 } from anywhere\"",
            "meta l4proto udp ct original proto-dst 11211 ip6 saddr @admin_v6 accept comment \"allow[2]: udp 11211 from admin\"",
        ];
        for rule in rules {
            assert!(
                r.lines().any(|l| l.trim() == rule),
                "missing {rule:?} in\n{r}"
            );
        }
        // Loopback and established traffic first, then the invalid-state drop, ICMP, and the
        // allow rules; the published chain ends in a drop.
        let pos = |needle: &str| r.find(needle).unwrap_or_else(|| panic!("{needle}"));
        assert!(pos("iif \"lo\" accept") < pos("ct state established,related accept"));
        assert!(pos("ct state established,related accept") < pos("ct state invalid drop"));
        assert!(pos("ct state invalid drop") < pos("icmp type"));
        assert!(pos("icmp type") < pos("nd-neighbor-solicit"));
        assert!(pos("nd-neighbor-solicit") < pos("tcp dport 22"));
        assert!(r.contains("type filter hook input priority filter; policy drop;"));
        assert!(r.contains("type filter hook forward priority filter - 10; policy accept;"));
        assert!(r.contains("\t\tct state new ct status dnat jump published"));
        assert!(r.contains("\t\tct state new oifname \"docker0\" jump routed"));
        assert!(r.contains("\t\tct state new oifname \"br-*\" jump routed"));
        assert!(r.ends_with("\t\tdrop\n\t}\n}\n"));
        assert!(!r.contains("flush"));
    }

    #[test]
    fn routed_and_container_rules_follow_the_bridges() {
        let cfg = fw("  sets: { admin: [10.0.0.1] }\n  container_bridges: [docker0, olnet, \"ol-*\"]\n  allow:\n    - { port: 22, from: admin }\n    - { port: 7000, from: containers }\n");
        let r = render(&cfg);
        let routed = &r[r.find("\tchain routed {").expect("routed chain")..];
        let lines: Vec<&str> = routed.lines().map(str::trim).collect();
        assert_eq!(
            lines[..7],
            [
                "chain routed {",
                "iifname \"docker0\" return comment \"from a container: Docker's rules decide\"",
                "iifname \"olnet\" return comment \"from a container: Docker's rules decide\"",
                "iifname \"ol-*\" return comment \"from a container: Docker's rules decide\"",
                "ip saddr @admin_v4 tcp dport 22 accept comment \"allow[0]: tcp 22 from admin\"",
                "iifname \"docker0\" tcp dport 7000 accept comment \"allow[1]: tcp 7000 from containers\"",
                "iifname \"olnet\" tcp dport 7000 accept comment \"allow[1]: tcp 7000 from containers\"",
            ]
        );
        assert!(r.contains("\t\tct state new oifname \"ol-*\" jump routed"));
        assert!(
            !r.contains("br-*"),
            "the config's bridges replace the default"
        );
        assert!(r.contains(
            "\t\tiifname \"ol-*\" tcp dport 7000 accept comment \"allow[1]: tcp 7000 from containers\"\n"
        ));
        assert!(
            r.contains("\t\tmeta l4proto tcp ct original proto-dst 7000 iifname \"olnet\" accept")
        );
    }

    #[test]
    fn render_is_deterministic_and_follows_the_config() {
        let a = fw("  sets: { admin: [10.0.0.1] }\n  allow: [{ port: 22, from: admin }]\n");
        let b = fw(
            "  sets: { admin: [10.0.0.1] }\n  allow: [{ port: 22, from: admin }, { port: 80 }]\n",
        );
        assert_eq!(render(&a), render(&a));
        assert_ne!(render(&a), render(&b));
    }

    #[test]
    fn empty_sets_allow_nothing_and_are_reported() {
        let cfg =
            fw("  ssh: closed\n  sets: { none: [] }\n  allow: [{ port: 8080, from: none }]\n");
        let r = render(&cfg);
        assert!(!r.contains("8080"), "{r}");
        assert!(!r.contains("set none"));
        assert_eq!(
            empty_rules(&cfg),
            ["allow[0] (tcp 8080) allows nothing: its sets (none) hold no address"]
        );
    }

    #[test]
    fn long_comments_are_cut() {
        let ports: Vec<String> = (1000..1100).map(|p| p.to_string()).collect();
        let cfg = fw(&format!(
            "  ssh: closed\n  allow: [{{ port: [{}] }}]\n",
            ports.join(", ")
        ));
        let r = render(&cfg);
        for line in r.lines().filter(|l| l.contains("comment")) {
            let c = &line[line.find("comment \"").expect("comment") + 9..line.len() - 1];
            assert!(c.len() <= COMMENT_MAX, "{c}");
        }
    }

    #[test]
    fn bad_set_names_are_invalid() {
        let text =
            "version: 1\nfirewall:\n  sets: { \"a b\": [10.0.0.1] }\n  allow: [{ port: 22 }]\n";
        let e = Config::parse("t.yaml", text)
            .and_then(|c| c.for_host("h"))
            .expect_err("invalid");
        assert!(format!("{e:#}").contains("firewall.sets.a b"), "{e:#}");
    }
}
