//! Docker-style table output: upper-case headers, columns padded to their
//! widest cell and separated by three spaces.

/// Renders `rows` under `headers`.
#[must_use]
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            text.push_str(cell);
            if i < last {
                let pad = widths[i] - cell.chars().count() + 3;
                text.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_line_up_like_docker() {
        let table = super::render(
            &["ID", "HOSTNAME", "STATUS"],
            &[
                vec!["abc *".into(), "node-1".into(), "Ready".into()],
                vec!["d".into(), "n2".into(), "Down".into()],
            ],
        );
        assert_eq!(
            table,
            "ID      HOSTNAME   STATUS\nabc *   node-1     Ready\nd       n2         Down\n"
        );
    }
}
