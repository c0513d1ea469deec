"""The torchrun entry point: a build-nanogpt-style GPT-2 trainer that owns checkpoint IO."""
