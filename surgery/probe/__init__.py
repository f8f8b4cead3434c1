"""`surgery probe`: does the fine-tuned model still know what it doesn't know? (hidden states, probes, report)"""
