use std::process::ExitCode;

use sidechain::config::Settings;
use sidechain::errors::ErrorChain;
use sidechain::startup::Application;
use sidechain::telemetry::{self, TelemetryOptions, logging};

fn main() -> ExitCode {
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("sidechain: {err}");
            return ExitCode::from(2);
        }
    };
    // The bench-only builds record with another pipeline (telemetry::peer, telemetry::fastrace);
    // the service, with its own.
    #[cfg(feature = "peer-pipeline")]
    let init = telemetry::peer::init;
    #[cfg(all(feature = "fastrace-pipeline", not(feature = "peer-pipeline")))]
    let init = telemetry::fastrace::init;
    #[cfg(not(any(feature = "peer-pipeline", feature = "fastrace-pipeline")))]
    let init = telemetry::init;
    let telemetry = match init(
        &settings.telemetry,
        settings.log_level,
        TelemetryOptions::default(),
    ) {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("sidechain: telemetry: {err}");
            return ExitCode::from(2);
        }
    };

    actix_web::rt::System::new().block_on(async move {
        let served = async {
            let app = Application::build(settings).await?;
            app.run_until_stopped().await?;
            Ok::<(), Box<dyn std::error::Error>>(())
        }
        .await;
        let code = match served {
            Ok(()) => {
                slog::info!(logging::logger(), "server stopped");
                ExitCode::SUCCESS
            }
            Err(err) => {
                slog::error!(logging::logger(), "start-up failed"; "error" => %ErrorChain(err.as_ref()));
                ExitCode::FAILURE
            }
        };
        // Flushed while the runtime still runs, so that a second signal during the flush ends
        // the process at once (`Application::run_until_stopped`).
        let _ = actix_web::rt::task::spawn_blocking(move || telemetry.shutdown()).await;
        code
    })
}
