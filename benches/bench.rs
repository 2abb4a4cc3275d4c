//! `make bench`: figures for RTDS on this machine, printed as a table and
//! written to `target/bench.json`. Not part of `make test`: it measures, it
//! does not assert.

use rtds::config::{ScriptConfig, ScriptLimits};
use rtds::model::{Origin, Status, TagState, TagTable, Value};
use rtds::script::ScriptHost;
use rtds::script::schedule::Schedule;
use std::time::{Duration, Instant};

struct Figure {
    key: &'static str,
    label: String,
    value: f64,
    unit: &'static str,
}

fn main() {
    let mut figures = Vec::new();
    script_cost(&mut figures);

    println!("\n{:<58} {:>14}  unit", "figure", "value");
    for f in &figures {
        println!("{:<58} {:>14.3}  {}", f.label, f.value, f.unit);
    }
    let json: Vec<String> = figures
        .iter()
        .map(|f| {
            format!(
                "  \"{}\": {{\"value\": {}, \"unit\": \"{}\"}}",
                f.key, f.value, f.unit
            )
        })
        .collect();
    let text = format!("{{\n{}\n}}\n", json.join(",\n"));
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench.json");
    std::fs::write(&path, text).expect("write target/bench.json");
    println!("\nwritten to {}", path.display());
}

/// Cost of one run of a script that reads 10,000 device tags and sets
/// 10,000 calculated tags, as a plant's unpack-and-scale script would.
fn script_cost(figures: &mut Vec<Figure>) {
    const N: usize = 10_000;
    let dir = std::env::temp_dir().join(format!("rtds-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("touch10k.rhai");
    std::fs::write(
        &file,
        format!(
            "for i in 0..{N} {{\n    let v = server.get_value(\"T\" + i);\n    server.set_value(\"C\" + i, v * 2.0);\n}}\n"
        ),
    )
    .unwrap();
    let cfg = ScriptConfig {
        name: "touch10k".into(),
        file,
        schedule: Schedule::EveryCycle,
        max_operations: ScriptLimits::default().max_operations,
        max_time: Duration::from_secs(60),
    };
    let mut host =
        ScriptHost::new(&[cfg], &ScriptLimits::default(), Duration::from_secs(1)).unwrap();
    let mut table = TagTable::default();
    let now = chrono::Utc::now();
    for i in 0..N {
        let origin = Origin::Device {
            connector: 0,
            local: i,
            writable: false,
        };
        let state = TagState {
            value: Some(Value::Float(i as f64)),
            status: Status::GOOD,
            ts: now,
        };
        table.add(format!("T{i}"), origin, state);
    }
    // The first run creates the 10,000 calculated tags; time the steady state.
    let out = host.run_due(&mut table, Instant::now(), now);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let runs = 20;
    let t0 = Instant::now();
    for _ in 0..runs {
        let out = host.run_due(&mut table, Instant::now(), chrono::Utc::now());
        assert_eq!(out.samples.len(), N);
    }
    let per_run = t0.elapsed().as_secs_f64() * 1000.0 / f64::from(runs);
    figures.push(Figure {
        key: "script_10k_tags_ms",
        label: "script touching 10,000 tags (get + set each), per run".into(),
        value: per_run,
        unit: "ms",
    });
    let _ = std::fs::remove_dir_all(&dir);
}
