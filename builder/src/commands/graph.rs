//! `rbuild graph`: the build graph a build would run, without running it.

use frontend::graph::{NoImages, compile};

use crate::cli::{GraphArgs, GraphFormat};

pub fn run(args: GraphArgs) -> anyhow::Result<()> {
    let platforms = args.build.target_platforms();
    if platforms.len() > 1 {
        // A usage error (exit 2), as clap's own.
        let given: Vec<String> = platforms.iter().map(|p| p.to_string()).collect();
        clap::Error::raw(
            clap::error::ErrorKind::ValueValidation,
            format!(
                "--platform {}: several platforms; `rbuild graph` shows the graph of one\n",
                given.join(",")
            ),
        )
        .exit();
    }
    let loaded = crate::dockerfile::load(&args.context, &args.build)?;
    let graph = compile(&loaded.plan, &NoImages)?;
    match args.format {
        GraphFormat::Dot => print!("{}", graph.to_dot()),
        GraphFormat::Json => println!("{}", serde_json::to_string_pretty(&graph.to_json())?),
    }
    Ok(())
}
