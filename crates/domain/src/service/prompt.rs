//! The agent prompt for one violation call, rendered from a readable template file.

use crate::models::DriverCall;

const TEMPLATE: &str = include_str!("prompt_template.txt");

/// Call-independent values the prompt and the agent's variables use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallContext {
    pub dispatcher_name: String,
    pub transfer_to_number: String,
}

/// One line per violation: `- temperature: Reefer at 45F, required 34-38F`.
pub fn violation_summary(driver: &DriverCall) -> String {
    driver
        .violations
        .iter()
        .map(|v| format!("- {}: {}", v.kind, v.description))
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn render(driver: &DriverCall, context: &CallContext) -> String {
    let rules = if driver.custom_rules.trim().is_empty() {
        "(none)".to_owned()
    } else {
        driver.custom_rules.trim().to_owned()
    };
    // Single pass over the placeholders, so text that looks like a placeholder inside a
    // value (driver-supplied rules, say) is never expanded again.
    let values = [
        ("{dispatcher_name}", context.dispatcher_name.as_str()),
        ("{driver_name}", driver.driver_name.as_str()),
        ("{trip_id}", driver.trip_id.as_str()),
        ("{violations}", &violation_summary(driver)),
        ("{custom_rules}", rules.as_str()),
        ("{transfer_to}", context.transfer_to_number.as_str()),
    ];
    let mut out = String::with_capacity(TEMPLATE.len() + 256);
    let mut rest = TEMPLATE;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        match values.iter().find(|(key, _)| tail.starts_with(key)) {
            Some((key, value)) => {
                out.push_str(value);
                rest = &tail[key.len()..];
            }
            None => {
                out.push('{');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{CallSid, PhoneNumber, Violation};

    fn driver(rules: &str) -> DriverCall {
        DriverCall {
            call_sid: CallSid::parse("EL_1_t").expect("sid"),
            driver_id: 1,
            driver_name: "Sam Carter".into(),
            phone_number: PhoneNumber::parse("+15551234567").expect("phone"),
            custom_rules: rules.into(),
            trip_id: "TRIP-9".into(),
            violations: vec![
                Violation {
                    kind: "temperature".into(),
                    description: "Reefer at 45F".into(),
                },
                Violation {
                    kind: "missed_stop".into(),
                    description: "Skipped stop 3".into(),
                },
            ],
        }
    }

    fn context() -> CallContext {
        CallContext {
            dispatcher_name: "AGY Dispatcher".into(),
            transfer_to_number: "+18005551234".into(),
        }
    }

    #[test]
    fn every_placeholder_is_filled() {
        let prompt = render(&driver("Be polite."), &context());
        for needle in [
            "AGY Dispatcher",
            "Sam Carter",
            "TRIP-9",
            "- temperature: Reefer at 45F",
            "- missed_stop: Skipped stop 3",
            "Be polite.",
            "+18005551234",
        ] {
            assert!(prompt.contains(needle), "{needle}");
        }
        assert!(!prompt.contains("{driver_name}"));
    }

    #[test]
    fn values_are_not_expanded_twice() {
        let prompt = render(&driver("say {transfer_to} and {x}"), &context());
        assert!(prompt.contains("say {transfer_to} and {x}"));
        assert!(render(&driver(""), &context()).contains("(none)"));
    }
}
