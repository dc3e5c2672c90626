use clap::Parser;

fn main() {
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let cli = orchestrate::cli::Cli::parse();
    if let Err(e) = orchestrate::signals::install() {
        eprintln!(
            "warning: cannot install signal handlers ({e}); Ctrl-C will end the process at once"
        );
    }
    let code = orchestrate::cli::run(cli, &mut std::io::stdout(), &mut std::io::stderr());
    std::process::exit(code);
}
