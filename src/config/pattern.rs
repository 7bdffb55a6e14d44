//! Host name patterns of a fleet file.

/// A host name pattern with numeric bracket ranges: `ol-mem[3-5]`, `ol-web[0-3,7]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern(Vec<Piece>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Lit(String),
    Nums(Vec<(u64, u64)>),
}

impl HostPattern {
    /// Parse a pattern; plain host names are patterns without brackets.
    pub fn parse(s: &str) -> Result<HostPattern, String> {
        let mut pieces = Vec::new();
        let mut rest = s;
        while !rest.is_empty() {
            match rest.find('[') {
                None => {
                    pieces.push(Piece::Lit(rest.to_string()));
                    rest = "";
                }
                Some(i) => {
                    if i > 0 {
                        pieces.push(Piece::Lit(rest[..i].to_string()));
                    }
                    let end = rest[i..]
                        .find(']')
                        .ok_or_else(|| format!("{s:?}: unclosed `[`"))?
                        + i;
                    let mut ranges = Vec::new();
                    for part in rest[i + 1..end].split(',') {
                        let (a, b) = part.split_once('-').unwrap_or((part, part));
                        let num = |t: &str| {
                            t.trim().parse::<u64>().map_err(|_| {
                                format!("{s:?}: {part:?} is not a number or a range like 3-5")
                            })
                        };
                        let (a, b) = (num(a)?, num(b)?);
                        if a > b {
                            return Err(format!("{s:?}: range {part:?} is backwards"));
                        }
                        ranges.push((a, b));
                    }
                    pieces.push(Piece::Nums(ranges));
                    rest = &rest[end + 1..];
                }
            }
        }
        let bad = |c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
        for p in &pieces {
            if let Piece::Lit(l) = p {
                if l.contains(bad) {
                    return Err(format!(
                        "{s:?}: only letters, digits, `-`, `.`, `_` and [a-b] ranges"
                    ));
                }
            }
        }
        if pieces.is_empty() {
            return Err("empty host pattern".into());
        }
        Ok(HostPattern(pieces))
    }

    /// Whether `host` matches (a number matches without leading zeros).
    pub fn matches(&self, host: &str) -> bool {
        let mut rest = host;
        for p in &self.0 {
            match p {
                Piece::Lit(l) => match rest.strip_prefix(l.as_str()) {
                    Some(r) => rest = r,
                    None => return false,
                },
                Piece::Nums(ranges) => {
                    let n = rest.bytes().take_while(u8::is_ascii_digit).count();
                    let digits = &rest[..n];
                    if n == 0 || (n > 1 && digits.starts_with('0')) {
                        return false;
                    }
                    let Ok(v) = digits.parse::<u64>() else {
                        return false;
                    };
                    if !ranges.iter().any(|(a, b)| (*a..=*b).contains(&v)) {
                        return false;
                    }
                    rest = &rest[n..];
                }
            }
        }
        rest.is_empty()
    }
}
