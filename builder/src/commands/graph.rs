//! `rbuild graph`: the build graph a build would run, without running it.

use frontend::graph::{NoImages, compile};

use crate::cli::{GraphArgs, GraphFormat};

pub fn run(args: GraphArgs) -> anyhow::Result<()> {
    let loaded = crate::dockerfile::load(&args.context, &args.build)?;
    let graph = compile(&loaded.plan, &NoImages)?;
    match args.format {
        GraphFormat::Dot => print!("{}", graph.to_dot()),
        GraphFormat::Json => println!("{}", serde_json::to_string_pretty(&graph.to_json())?),
    }
    Ok(())
}
