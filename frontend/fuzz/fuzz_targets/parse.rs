//! Any bytes through every frontend stage: parse, typed instructions, plan,
//! graph. Nothing may panic or hang; a parse must print and parse back the same.
#![no_main]

use frontend::graph::{NoImages, compile};
use frontend::stage::{PlanOptions, plan};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(df) = frontend::parse("Dockerfile", &text) else { return };
    let printed = frontend::print::print(&df);
    let again = frontend::parse("Dockerfile", &printed).expect("a printed Dockerfile parses");
    assert_eq!(again.dump(), df.dump());
    let _ = frontend::instructions::parse(&df);
    if let Ok(p) = plan(&df, &PlanOptions::default()) {
        let _ = compile(&p, &NoImages);
    }
});
