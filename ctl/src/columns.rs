//! Tables that fit the terminal: a column is either `Keep` (never cut: keys, states, times a
//! person copies or scans) or `Cut` (free text, shortened with `…` when the row would not fit,
//! gh's convention). Cells never wrap: one row is one line. `width: None` (`--wide`) shows
//! everything whole.

/// How a column behaves when the table is too wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// Always as wide as its widest cell.
    Keep,
    /// Shortened with `…` at the end down to `min` characters when needed.
    Cut { min: usize },
    /// Shortened at the start (`…/project/cloud.yaml`): for paths, whose end says the most.
    CutStart { min: usize },
}

#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub header: &'static str,
    pub fit: Fit,
}

/// One cell: its text and, when colour is on, the SGR code it is painted with.
#[derive(Debug, Clone, Default)]
pub struct Cell {
    pub text: String,
    pub sgr: Option<&'static str>,
}

impl Cell {
    pub fn plain(text: impl Into<String>) -> Cell {
        Cell {
            text: text.into(),
            sgr: None,
        }
    }
    pub fn painted(text: impl Into<String>, sgr: &'static str) -> Cell {
        Cell {
            text: text.into(),
            sgr: Some(sgr),
        }
    }
}

const GAP: &str = "  ";

/// Characters on screen (the texts shown here are single-width).
pub fn chars(s: &str) -> usize {
    s.chars().count()
}

/// `s` cut to `width` characters, the last one `…` when something was cut.
pub fn truncate(s: &str, width: usize) -> String {
    if chars(s) <= width {
        return s.to_string();
    }
    if width == 0 {
        return String::new();
    }
    let mut out: String = s.chars().take(width - 1).collect();
    out.push('…');
    out
}

/// The width of each column for these rows within `width` (or their natural widths).
fn widths(columns: &[Column], rows: &[Vec<Cell>], width: Option<usize>) -> Vec<usize> {
    let headers: Vec<usize> = columns.iter().map(|c| chars(c.header)).collect();
    let mut w = headers.clone();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(w.len()) {
            w[i] = w[i].max(chars(&cell.text));
        }
    }
    let Some(limit) = width else {
        return w;
    };
    let gaps = GAP.len() * columns.len().saturating_sub(1);
    // Shrink the widest cuttable column one character at a time until the row fits or every
    // cuttable column is at its minimum.
    while w.iter().sum::<usize>() + gaps > limit {
        let widest = columns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| match c.fit {
                // A header is never cut: it names the column.
                Fit::Cut { min } | Fit::CutStart { min } if w[i] > min.max(headers[i]).max(1) => {
                    Some(i)
                }
                _ => None,
            })
            .max_by_key(|&i| w[i]);
        match widest {
            Some(i) => w[i] -= 1,
            None => break,
        }
    }
    w
}

/// `s` cut to `width` characters from the start, the first one `…` when something was cut.
pub fn truncate_start(s: &str, width: usize) -> String {
    let n = chars(s);
    if n <= width {
        return s.to_string();
    }
    if width == 0 {
        return String::new();
    }
    let mut out = String::from("…");
    out.extend(s.chars().skip(n - (width - 1)));
    out
}

/// The table's lines: header then one line per row, no trailing spaces. `color` paints the
/// header bold and each cell with its SGR code (after padding, so columns stay aligned).
pub fn render(
    columns: &[Column],
    rows: &[Vec<Cell>],
    width: Option<usize>,
    color: bool,
) -> Vec<String> {
    let w = widths(columns, rows, width);
    let line = |cells: Vec<(String, Option<&'static str>)>| -> String {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, (text, sgr)) in cells.into_iter().enumerate() {
            let text = match columns.get(i).map(|c| c.fit) {
                Some(Fit::CutStart { .. }) => truncate_start(&text, w[i]),
                _ => truncate(&text, w[i]),
            };
            let pad = if i == last {
                String::new()
            } else {
                " ".repeat(w[i] - chars(&text))
            };
            match sgr {
                Some(code) if color => out.push_str(&format!("\x1b[{code}m{text}\x1b[0m{pad}")),
                _ => {
                    out.push_str(&text);
                    out.push_str(&pad);
                }
            }
            if i != last {
                out.push_str(GAP);
            }
        }
        out.trim_end().to_string()
    };
    let mut out = vec![line(
        columns
            .iter()
            .map(|c| (c.header.to_string(), Some("1")))
            .collect(),
    )];
    for row in rows {
        out.push(line(
            row.iter()
                .take(columns.len())
                .map(|c| (c.text.clone(), c.sgr))
                .collect(),
        ));
    }
    out
}

/// `text` word-wrapped to `width` columns: the first line starts with `first`, the others with
/// `rest` (both indents counted). A word longer than a line is cut with `…`. `width: None`
/// keeps one line.
pub fn wrap(text: &str, width: Option<usize>, first: &str, rest: &str) -> Vec<String> {
    let Some(width) = width else {
        return vec![format!("{first}{text}")];
    };
    let mut lines = Vec::new();
    let mut line = first.to_string();
    let mut empty = true;
    for word in text.split_whitespace() {
        let need = chars(word) + usize::from(!empty);
        if !empty && chars(&line) + need > width {
            lines.push(std::mem::replace(&mut line, rest.to_string()));
            empty = true;
        }
        let room = width.saturating_sub(chars(&line) + usize::from(!empty));
        if !empty {
            line.push(' ');
        }
        line.push_str(&truncate(word, room.max(1)));
        empty = false;
    }
    lines.push(line);
    lines
}

/// The terminal's width (stdout, else stderr), else `$COLUMNS`, else 80.
pub fn terminal_width() -> usize {
    for fd in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        // SAFETY: `winsize` is four integers: all-zero is a valid value.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ writes one `winsize` into the struct passed; a descriptor that is
        // not a terminal makes it fail, and then the struct is not read.
        let ok = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0;
        if ok && ws.ws_col > 0 {
            return usize::from(ws.ws_col);
        }
    }
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .filter(|&c: &usize| c > 0)
        .unwrap_or(80)
}

/// "showing 20 of 143" when a list was cut, else nothing.
pub fn footer(shown: usize, total: usize) -> Option<String> {
    (shown < total).then(|| format!("showing {shown} of {total}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_columns_stay_whole_and_text_is_cut_with_an_ellipsis() {
        let cols = [
            Column {
                header: "KEY",
                fit: Fit::Keep,
            },
            Column {
                header: "REASON",
                fit: Fit::Cut { min: 6 },
            },
        ];
        let rows = vec![vec![
            Cell::plain("0123456789abcdef"),
            Cell::plain("x".repeat(200)),
        ]];
        let lines = render(&cols, &rows, Some(40), false);
        for l in &lines {
            assert!(chars(l) <= 40, "{l}");
        }
        assert!(
            lines[1].starts_with("0123456789abcdef  xxx"),
            "{}",
            lines[1]
        );
        assert!(lines[1].ends_with('…'), "{}", lines[1]);
        let wide = render(&cols, &rows, None, false);
        assert!(wide[1].ends_with(&"x".repeat(200)));
    }

    #[test]
    fn colour_does_not_move_columns() {
        let cols = [
            Column {
                header: "STATE",
                fit: Fit::Keep,
            },
            Column {
                header: "N",
                fit: Fit::Keep,
            },
        ];
        let rows = vec![vec![Cell::painted("ok", "32"), Cell::plain("1")]];
        let plain = render(&cols, &rows, Some(80), false);
        let painted = render(&cols, &rows, Some(80), true);
        let strip = |s: &str| {
            s.replace("\x1b[32m", "")
                .replace("\x1b[1m", "")
                .replace("\x1b[0m", "")
        };
        assert_eq!(strip(&painted[1]), plain[1]);
        assert_eq!(strip(&painted[0]), plain[0]);
    }

    #[test]
    fn wrapped_text_keeps_its_indent_and_fits() {
        let lines = wrap(
            "look at the runner: `megaplan-cloudctl --cloud-yaml /a/very/long/path/cloud.yaml attach`",
            Some(30),
            "  → ",
            "    ",
        );
        assert!(lines.len() > 1, "{lines:?}");
        assert!(lines[0].starts_with("  → look"), "{lines:?}");
        for l in &lines {
            assert!(chars(l) <= 30, "{l}");
        }
        assert!(
            lines[1..].iter().all(|l| l.starts_with("    ")),
            "{lines:?}"
        );
        assert_eq!(wrap("a b", None, "- ", "  "), ["- a b"]);
    }

    #[test]
    fn footer_only_when_cut() {
        assert_eq!(footer(20, 143).as_deref(), Some("showing 20 of 143"));
        assert_eq!(footer(3, 3), None);
    }
}
