"""World editions of the preference datasets: POVID-like constructed pairs, and ranking (VLFeedback-like) and
correction (RLHF-V-like) datasets sampled from models of different strength and rated by the oracle."""
