//! A small line diff for `plan`: which ruleset lines go (`- `) and which come (`+ `).
//! Lines are compared with surrounding whitespace trimmed and shown with their indentation
//! (tabs as two spaces); blank lines and `#` comments are ignored.

/// Above this many cells, the middle part is shown as all removed then all added instead of
/// computing a longest common subsequence (rulesets are far smaller in practice).
const MAX_CELLS: usize = 4_000_000;

/// The lines worth comparing: not blank, not a comment.
fn significant(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim_end)
        .filter(|l| {
            let t = l.trim_start();
            !t.is_empty() && !t.starts_with('#')
        })
        .collect()
}

fn same(x: &str, y: &str) -> bool {
    x.trim() == y.trim()
}

/// A diff line: the sign, then the line with its tabs as two spaces.
fn shown(sign: char, line: &str) -> String {
    format!("{sign} {}", line.replace('\t', "  "))
}

/// The removed (`- line`) and added (`+ line`) lines turning `old` into `new`, in order.
pub fn lines(old: &str, new: &str) -> Vec<String> {
    let a = significant(old);
    let b = significant(new);
    let head = a.iter().zip(&b).take_while(|(x, y)| same(x, y)).count();
    let tail = a[head..]
        .iter()
        .rev()
        .zip(b[head..].iter().rev())
        .take_while(|(x, y)| same(x, y))
        .count();
    let (a, b) = (&a[head..a.len() - tail], &b[head..b.len() - tail]);
    let mut out = Vec::new();
    if a.len().saturating_mul(b.len()) > MAX_CELLS {
        out.extend(a.iter().map(|l| shown('-', l)));
        out.extend(b.iter().map(|l| shown('+', l)));
        return out;
    }
    // lcs[i * w + j]: length of the longest common subsequence of a[i..] and b[j..].
    let w = b.len() + 1;
    let mut lcs = vec![0u32; (a.len() + 1) * w];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i * w + j] = if same(a[i], b[j]) {
                lcs[(i + 1) * w + j + 1] + 1
            } else {
                lcs[(i + 1) * w + j].max(lcs[i * w + j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && same(a[i], b[j]) {
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[(i + 1) * w + j] >= lcs[i * w + j + 1]) {
            out.push(shown('-', a[i]));
            i += 1;
        } else {
            out.push(shown('+', b[j]));
            j += 1;
        }
    }
    out
}

/// `diff` as indented lines after a summary line, at most `max` of them.
pub fn describe(diff: &[String], max: usize) -> String {
    let added = diff.iter().filter(|l| l.starts_with('+')).count();
    let removed = diff.len() - added;
    let mut s = format!("{added} line(s) added, {removed} removed");
    for l in diff.iter().take(max) {
        s.push_str("\n    ");
        s.push_str(l);
    }
    if diff.len() > max {
        s.push_str(&format!("\n    ... {} more", diff.len() - max));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_only_changed_lines_in_order() {
        let old =
            "table t {\n\tchain c {\n\t\ttcp dport 22 accept\n\t\ttcp dport 80 accept\n\t}\n}\n";
        let new = "table t {\n\tchain c {\n\t\ttcp dport 22 accept\n\n\t\ttcp dport 443 accept\n\t\tudp dport 53 accept\n\t}\n}\n";
        assert_eq!(
            lines(old, new),
            [
                "-     tcp dport 80 accept",
                "+     tcp dport 443 accept",
                "+     udp dport 53 accept"
            ]
        );
        assert!(lines(new, new).is_empty());
        assert!(lines("  a\n", "a").is_empty());
        assert!(lines("# one\na\n", "# two\na\n").is_empty());
    }

    #[test]
    fn from_nothing_everything_is_added() {
        assert_eq!(lines("", "a\n\tb\n"), ["+ a", "+   b"]);
        assert_eq!(lines("a\nb\n", ""), ["- a", "- b"]);
    }

    #[test]
    fn describe_caps_the_lines() {
        let d: Vec<String> = (0..5).map(|i| format!("+ r{i}")).collect();
        let s = describe(&d, 2);
        assert_eq!(
            s,
            "5 line(s) added, 0 removed\n    + r0\n    + r1\n    ... 3 more"
        );
    }
}
