"""Text tasks (causal-LM perplexity, encoder fidelity) on the Python docs corpus."""
