//! `spillway config check`.

use crate::{
    cli::{ConfigCommand, Role},
    settings::Settings,
};

pub(crate) fn config(s: &Settings, cmd: ConfigCommand) -> anyhow::Result<()> {
    match cmd {
        ConfigCommand::Check { role } => {
            // Loading ran every check but one: a sink URL left unset,
            // which only a consumer needs.
            let consumes = role != Some(Role::Serve) || s.server.consume;
            if consumes {
                spillway_consumer::check_sink(&s.consumer.sink)?;
            }
            let mut effective = s.masked();
            drop_nulls(&mut effective);
            let text = toml::to_string_pretty(&effective)?;
            println!("# configuration is valid; effective values, secrets masked\n{text}");
        }
    }
    Ok(())
}

/// TOML has no null: an unset optional value is simply left out.
fn drop_nulls(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            map.retain(|_, child| !child.is_null());
            map.values_mut().for_each(drop_nulls);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}
