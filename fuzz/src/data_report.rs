//! The DataDeployer's report grammar (`applied <version>`, `version <version>: <reason>`), read by
//! the controller from a watchdog anyone may post: whatever parses prints back exactly, and its
//! formatted (possibly shortened) message fits a watchdog and still names the same version.
//!
//! Input: one level byte (`i`nfo, `w`arning, `e`rror, else by value) then the message.

use autocrane_api::{
    data_report::DataReport,
    watchdog::{Level, MAX_MESSAGE_BYTES},
};

/// Checks one input.
pub fn check(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let level = match first {
        b'i' => Level::Info,
        b'w' => Level::Warning,
        b'e' => Level::Error,
        other => [Level::Info, Level::Warning, Level::Error][usize::from(other % 3)],
    };
    let Some(message) = crate::text(rest) else {
        return;
    };
    let Ok(report) = DataReport::parse(level, message) else {
        return;
    };
    assert_eq!(report.level(), level);
    assert_eq!(report.to_string(), message, "parsing is not exact");
    check_report(&report);
}

/// The formatted message of `report` fits a watchdog and parses back to the same version (and to
/// the same report when nothing was cut); only a version too long to fit makes it no report.
pub fn check_report(report: &DataReport) {
    let formatted = report.format();
    assert!(formatted.len() <= MAX_MESSAGE_BYTES, "{}", formatted.len());
    // `version <version>: ...` is the shortest a failure with a cut reason gets.
    let version_fits = match report {
        DataReport::Applied { version } => "applied ".len() + version.len() <= MAX_MESSAGE_BYTES,
        DataReport::Failed { version, .. } => {
            "version : ...".len() + version.len() <= MAX_MESSAGE_BYTES
        }
    };
    match DataReport::parse(report.level(), &formatted) {
        Ok(again) => {
            assert_eq!(again.version(), report.version(), "the version was cut");
            if report.to_string().len() <= MAX_MESSAGE_BYTES {
                assert_eq!(&again, report);
            }
        }
        Err(e) => assert!(
            !version_fits,
            "the formatted report {formatted:?} does not parse: {e}"
        ),
    }
}
