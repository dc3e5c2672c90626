use clap::Parser;

fn main() {
    let cli = orchestrate::cli::Cli::parse();
    let code = orchestrate::cli::run(cli, &mut std::io::stdout(), &mut std::io::stderr());
    std::process::exit(code);
}
