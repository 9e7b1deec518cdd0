//! `metabridge call`: one call, its result printed as one line of JSON
//! (or raw bytes with `--raw`).

use crate::connect::{call_args, open_client};
use crate::fail::Fail;
use crate::flags::CallSpec;
use crate::json;
use std::io::Write;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    call: CallSpec,
    /// Write a bytes result as raw bytes instead of JSON
    /// (`{"$bytes": "<base64>"}`).
    #[arg(long)]
    raw: bool,
}

/// Makes the call and prints its result.
pub fn run(Args { call: spec, raw }: Args) -> Result<(), Fail> {
    let (call, _) = call_args(spec.args.as_deref(), &spec.target)?;
    let client = open_client(&spec.service, &spec.target)?;
    let result: rmpv::Value = client.call_with(&spec.endpoint, &call)?;
    client.close();
    let mut out = std::io::stdout().lock();
    match (&result, raw) {
        (rmpv::Value::Binary(b), true) => {
            let _ = out.write_all(b);
        }
        _ => {
            let _ = writeln!(out, "{}", json::to_json(&result));
        }
    }
    Ok(())
}
