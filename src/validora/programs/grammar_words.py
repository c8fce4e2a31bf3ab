"""The word lists of the requirement grammar (`programs/grammar.py`): what its forms are made of, the
words a subject may hold, and the words that can negate, restrict or name a yes/no answer.

Lists here never read a text as positive: the grammar recognises its forms and refuses the rest. A word
missing from SUBJECT_WORDS makes a reading refused; a word missing from the negating or answer lists
can only let a yes/no statement read as "the statement holds", which is the spec for such sets.
"""

from __future__ import annotations

import re

YES_LIKE = {"yes", "y", "true", "pass", "passed", "valid", "compliant", "ok", "good", "1", "safe"}
YES_LIKE |= {"correct", "acceptable", "positive"}
NO_LIKE = {"no", "n", "false", "fail", "failed", "invalid", "non_compliant", "noncompliant", "bad", "0"}
NO_LIKE |= {"not_compliant", "unsafe", "not_ok", "incorrect", "unacceptable", "negative", "not_valid"}
QUOTES = {"'": "'", '"': '"', "`": "`", "‘": "’", "“": "”"}
ORDINARY = {"yes", "no", "not", "none", "y", "n", "ok", "true", "false", "0", "1"}  # routing: quoted only

MODALS = {"must", "should", "shall", "will"}
NEGATED_MODALS = {"mustn't", "shouldn't", "shan't", "won't", "cannot", "can't"}
COPULAS = {"is": False, "are": False, "isn't": True, "aren't": True}
GRAMMAR_WORDS = MODALS | NEGATED_MODALS | set(COPULAS) | {"be", "not", "never", "no", "longer", "can"}
GRAMMAR_WORDS |= {"has", "have", "needs", "need", "to", "classified", "labelled", "labeled", "predicted"}
GRAMMAR_WORDS |= {"marked", "as", "one", "any", "of", "either", "or", "neither", "nor", "none", "and"}
GRAMMAR_WORDS |= {"anything", "label", "class", "value", "other", "than", "but", "except", "for"}
GRAMMAR_WORDS |= {"rather", "instead", "nothing", "else"}
# Words that can negate, contrast, restrict, condition or hedge: never plain, so never a subject word.
RESTRICTING = {"nothing", "nobody", "nowhere", "neither", "nor", "none", "no", "not", "never", "without"}
RESTRICTING |= {"but", "except", "excluding", "exclude", "excluded", "only", "just", "merely", "solely"}
RESTRICTING |= {"free", "less", "unless", "if", "when", "whenever", "while", "whereas", "though"}
RESTRICTING |= {"although", "because", "since", "until", "instead", "rather", "otherwise", "else"}
RESTRICTING |= {"than", "other", "besides", "apart", "aside", "save", "barring", "lest", "neednt"}
RESTRICTING |= {"false", "untrue", "fail", "fails", "failed", "failing", "lack", "lacks", "lacking"}
RESTRICTING |= {"avoid", "avoids", "forbid", "forbidden", "prohibited", "disallowed", "reject"}
RESTRICTING |= {"rejected", "wrong", "incorrect", "stop", "stops", "cease", "ceases", "hardly", "barely"}
RESTRICTING |= {"rarely", "seldom", "scarcely", "differ", "differs", "different", "unlike", "opposite"}
RESTRICTING |= {"negate", "negates", "negative", "deny", "denies", "absent", "missing", "may", "might"}
RESTRICTING |= {"can", "could", "would", "maybe", "perhaps", "possibly", "either", "any", "anything"}
RESTRICTING |= {"everything", "minus", "ignore", "ignoring", "regardless", "whether", "or", "yet"}
CONTRACTED = re.compile(r".*n't|.*(less|free)|non.*|un.*|dis(allow|able|agree|approv|qualif|honest).*")
CONTRACTED_BARE = {
    "cant",
    "dont",
    "wont",
    "isnt",
    "arent",
    "mustnt",
    "shouldnt",
    "shant",
    "wouldnt",
    "couldnt",
}
CONTRACTED_BARE |= {"doesnt", "didnt", "aint", "neednt", "hasnt", "havent", "wasnt", "werent", "mightnt"}
IN_ADJECTIVE = re.compile(
    r"(in|im|il|ir)\w+(able|ible|ate|ent|ant|ive|al|ect|id|ete|ure|ane|ous|ar|per|ite|ise|ere|act|man)$"
)
PLAIN_EXCEPTIONS = {"unit", "units", "union", "unique", "uniform", "universal", "understand", "unix"}
PLAIN_EXCEPTIONS |= {"nonce", "important", "immediate", "interval", "internal", "international"}
PLAIN_EXCEPTIONS |= {"initial", "individual", "intent", "interpretation", "informal", "industrial"}
# Words that name or paraphrase a yes/no answer: a yes/no set is then read only through the forms.
ANSWER_WORDS = YES_LIKE | NO_LIKE | {"passes", "passing", "failure", "success", "succeed", "succeeds"}
ANSWER_WORDS |= {"right", "okay", "accept", "accepted", "allowed", "zero", "one", "compliance"}
ANSWER_WORDS |= {"affirmative", "nay", "nope", "yeah", "yep", "aye", "agree", "agrees", "disagree", "deny"}
ANSWER_WORDS |= {"denied", "decline", "declined", "refuse", "refused", "lie", "lies", "lying", "fake"}
ANSWER_WORDS |= {"bogus", "truth", "truthful", "factual", "accurate", "mistaken", "mistake", "mistakes"}
ANSWER_WORDS |= {"error", "errors", "erroneous", "dangerous", "harmful", "harm", "hazardous", "risky"}
ANSWER_WORDS |= {"risk", "toxic", "offensive", "benign", "secure", "malformed", "broken", "corrupt"}
ANSWER_WORDS |= {"corrupted", "wellformed", "conform", "conforms", "comply", "complies", "violate"}
ANSWER_WORDS |= {"violates", "violation", "violations", "breach", "breaches", "poor", "great", "fine"}
ANSWER_WORDS |= {"excellent", "terrible", "awful", "alright", "problematic", "problem", "problems"}
ANSWER_WORDS |= {"issue", "issues", "flawed", "flaw", "flaws", "defective", "proper", "approve"}
ANSWER_WORDS |= {"approved", "appropriate", "permitted", "legitimate", "legit", "bogus", "sound"}
ANSWER_WORDS |= {
    "nah",
    "nok",
    "ko",
    "nein",
    "negatory",
    "nil",
    "null",
    "void",
    "off",
    "on",
    "flunk",
    "flunks",
}
NUMBER_WORDS = {"zero", "one", "none", "nil", "null", "half", "nought", "naught", "single", "once", "twice"}
SUBJECT_NOUNS = {"label", "labels", "class", "value"}  # grammar words that may name the subject
# A subject is closed too: these words only ("The failure mode", "The output's label", "It"). A subject of
# other words can turn the sentence around ("The banned label is 'x'", "I doubt it is 'x'"): refused.
SUBJECT_WORDS = SUBJECT_NOUNS | {"the", "a", "an", "its", "this", "it", "output", "output's", "answer"}
SUBJECT_WORDS |= {"response", "reply", "text", "message", "summary", "note", "item", "document", "post"}
SUBJECT_WORDS |= {"review", "category", "classification", "prediction", "predicted", "result", "verdict"}
SUBJECT_WORDS |= {"mode", "type", "kind", "topic", "sentiment", "failure", "fault", "cause", "diagnosis"}
SUBJECT_WORDS |= {"part", "component", "model", "model's", "generated", "generation", "final", "engine"}
SUBJECT_WORDS |= {"triage", "status", "outcome", "decision", "tag", "intent", "language", "tone", "style"}
SUBJECT_WORDS |= {"statement", "claim", "sentence", "json", "code", "email", "ticket", "comment", "content"}
SUBJECT_WORDS |= {
    "report",
    "record",
    "description",
    "request",
    "query",
    "engine's",
    "chatbot's",
    "assistant's",
}
