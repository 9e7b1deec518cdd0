//! `metabridge gc`: removes what dead services left and says what it
//! removed and what it kept.

use crate::fail::Fail;

#[derive(clap::Args)]
pub struct Args {
    /// JSON instead of lines.
    #[arg(long)]
    json: bool,
}

/// Runs [`metabridge::gc`] and prints its report.
pub fn run(a: Args) -> Result<(), Fail> {
    let report = metabridge::gc()?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"removed": report.removed, "kept": report.kept})
        );
        return Ok(());
    }
    if report.removed.is_empty() {
        println!("removed nothing");
    }
    for r in &report.removed {
        println!("removed: {r}");
    }
    for k in &report.kept {
        println!("kept: {k}");
    }
    Ok(())
}
