//! Tables on standard output: columns padded to their widest cell, the
//! last one not padded.

use std::io::Write;

/// Prints `rows` (the first is the header) as aligned columns; a closed
/// pipe (`| head`) ends the output quietly.
pub fn print_table(rows: &[Vec<String>]) {
    let cols = rows.first().map_or(0, |r| r.len());
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = std::io::stdout().lock();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == cols {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(widths[c] - cell.chars().count() + 2));
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}
