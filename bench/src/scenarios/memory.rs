//! Scenario 6: peak RSS (`VmHWM`) of the API and the relay, read from `/proc`
//! by the scenarios that ran them as child processes. The goals are absolute,
//! so the ratio column shows the share of the budget used.

use crate::report::Figure;

use super::Ctx;

const API_BUDGET_MB: f64 = 100.0;
const RELAY_BUDGET_MB: f64 = 50.0;

pub fn report(ctx: &mut Ctx) {
    let rows = [
        ("API", API_BUDGET_MB, std::mem::take(&mut ctx.memory.api)),
        (
            "relay",
            RELAY_BUDGET_MB,
            std::mem::take(&mut ctx.memory.relay),
        ),
    ];
    for (what, budget, readings) in rows {
        if readings.is_empty() {
            ctx.report.note(format!(
                "Scenario 6: no {what} reading (run scenarios 1 and 2 to get one)"
            ));
            continue;
        }
        // The highest reading per label (a scenario may run several processes).
        let mut peaks: Vec<(String, f64)> = Vec::new();
        for (label, peak) in readings {
            match peaks.iter_mut().find(|(l, _)| *l == label) {
                Some(entry) => entry.1 = entry.1.max(peak),
                None => peaks.push((label, peak)),
            }
        }
        // The goal is about scenarios 1–2; later readings are shown for information.
        for (label, peak) in &peaks {
            let decides = label.starts_with("scenario 1") || label.starts_with("scenario 2");
            let mut figure = Figure::new("6", format!("{what} peak RSS, {label}"))
                .value(format!("{peak:.1} MB"))
                .baseline(format!("budget {budget:.0} MB"))
                .ratio(peak / budget);
            if decides {
                figure = figure.goal(format!("< {budget:.0} MB"), *peak < budget);
            }
            ctx.report.push(figure);
        }
    }
}
