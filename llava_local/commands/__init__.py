"""CLI subcommands that belong to the runtime (chat, info)."""
