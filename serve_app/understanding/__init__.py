"""Reading a meme's meaning: labels, the slang lexicon, prompts, parsing a model's text,
structuring it into the analysis contract, risk and the output safety filter.
"""
