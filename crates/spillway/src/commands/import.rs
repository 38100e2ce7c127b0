//! `spillway import FILE`: an API Gateway setup as a spillway.toml
//! (`spillway-import` does the reading; this prints, and checks the result
//! with the same settings `serve` loads).

use anyhow::Context;
use figment::{providers::Format, Figment};
use spillway_import::{Kind, Options};

use crate::{cli::ImportArgs, settings::Settings};

pub(crate) fn import(args: &ImportArgs) -> anyhow::Result<()> {
    let read =
        |p: &std::path::Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    let text = read(&args.file)?;
    let usage_plans = args.usage_plans.as_deref().map(read).transpose()?;
    let name = args.file.display().to_string();
    let out = spillway_import::import(&name, &text, &Options { usage_plans })?;
    check(&out.toml, out.plan.api_keys.is_some())?;
    for f in &out.findings {
        eprintln!("{f}");
    }
    let count = |k: Kind| out.findings.iter().filter(|f| f.kind == k).count();
    let not_carried = count(Kind::NotCarried);
    eprintln!(
        "spillway import: {} route(s), {} queue(s); {not_carried} not carried, {} differ, {} notes",
        out.plan.routes.len(),
        out.plan.queues.len(),
        count(Kind::Differs),
        count(Kind::Note)
    );
    print!("{}", out.toml);
    if args.strict && not_carried > 0 {
        std::process::exit(3);
    }
    Ok(())
}

/// The output must load as `serve` loads it. The API key file it points
/// at need not exist yet (the report says to write it): a stand-in with one
/// key takes its place for the check.
fn check(toml: &str, keys: bool) -> anyhow::Result<()> {
    let mut f = Figment::new().merge(figment::providers::Toml::string(toml));
    let stand_in = std::env::temp_dir().join(format!("spillway-import-check-{}", std::process::id()));
    if keys {
        std::fs::write(&stand_in, "spillway-import-stand-in-key\n").context("writing a stand-in key file")?;
        f = f.merge(figment::providers::Serialized::default("ingest.api_keys.files", [&stand_in]));
    }
    let loaded = Settings::from_figment(&f);
    if keys {
        let _ = std::fs::remove_file(&stand_in);
    }
    loaded.map(|_| ()).map_err(|e| {
        e.context("the imported configuration does not load (a bug in `spillway import`: please report it with the input)")
    })
}
