"""Injection rules in Spanish, Portuguese, Italian, French and German.

The same attacks as the English rules of :mod:`bastion.guard.rules`
(instruction override, "from now on you are", personas "without restrictions",
system-prompt extraction), phrased the way these requests are commonly
written in each language. They were written from general knowledge of the
languages, not from any evaluation set, and are checked for false positives on
benign text in the same languages (``bench/guard/injection_eval.py``).

Patterns run on lower-case-insensitive, **accent-folded** text
(:func:`fold_accents`: ``instrucción`` -> ``instruccion``, same length), so
writers who drop accents are matched too. An override needs a verb, a target
("instructions", "rules") *and* a qualifier ("all", "your", "previous"):
"ignora las instrucciones del fabricante" is advice, not an attack.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass

# Patterns are lower case and compiled without IGNORECASE (ten times faster on long
# texts): they run on accent-folded, lower-cased text (:func:`fold_lower`).
_F = re.DOTALL
# a negation just before the verb ("no ignores", "n'ignorez pas") is advice, not an attack
_NEGATED = re.compile(r"(?:\b(?:no|non|nao|ne|pas|nicht)\s+|\bn')$")
_OVERRIDE = {  # language: (verbs, targets, qualifiers)
    "es": (
        r"ignor(?:a|e|ad|en|ar|ando)|olvid(?:a|e|ad|en|ar|ando)|olvid(?:ate|ese)\s+de|"
        r"descart(?:a|e|ad|en)|desestim(?:a|e|ad)|omit(?:e|a|id|ir)|pasa\s+por\s+alto|"
        r"haz\s+caso\s+omiso\s+(?:a|de)|deja\s+de\s+lado|anul(?:a|e)|desobedece|"
        r"no\s+(?:sigas|siga|obedezcas|obedezca|respetes|cumplas)|deja\s+de\s+(?:seguir|obedecer)",
        r"instruccion(?:es)?|indicaciones|ordenes|reglas|normas|directrices|directivas|"
        r"pautas|restricciones|limitaciones|comandos|consignas|programacion|prompts?",
        r"todas|todos|tus|sus|vuestras|cualquier|anteriores|anterior|previas?|previos?|"
        r"precedentes|arriba|iniciales|originales|sistema|antes|recibidas|dadas|impuestas",
    ),
    "pt": (
        r"ignor(?:e|a|em|ar|ando)|esque(?:ca|ce|cam|cer|cendo)|desconsider(?:e|a|em|ar)|"
        r"desprez(?:e|a)|descart(?:e|a)|deixe\s+de\s+lado|anul(?:e|a)|desobede(?:ca|ce)|"
        r"nao\s+(?:siga|obedeca|respeite|cumpra)|(?:pare|deixe)\s+de\s+(?:seguir|obedecer)",
        r"instruc(?:ao|oes)|orientac(?:ao|oes)|ordens|regras|normas|diretrizes|diretivas|"
        r"restric(?:ao|oes)|limitac(?:ao|oes)|comandos|programacao|prompts?",
        r"todas|todos|suas|seus|tuas|teus|quaisquer|qualquer|anteriores|anterior|"
        r"previas?|precedentes|acima|iniciais|originais|sistema|antes|recebidas|dadas|impostas",
    ),
    "it": (
        r"ignor(?:a|i|ate|are|ando)|dimentic(?:a|hi|ate|are|ando)|dimenticati\s+di|"
        r"trascur(?:a|ate|are)|scart(?:a|ate)|tralascia|lascia\s+perdere|annull(?:a|ate)|"
        r"non\s+(?:considerare|seguire|rispettare|obbedire\s+a)|"
        r"non\s+tener(?:e)?\s+conto\s+d|smetti\s+di\s+(?:seguire|rispettare)",
        r"istruzion[ie]|indicazioni|regole|direttive|linee\s+guida|ordini|comandi|"
        r"restrizioni|vincoli|limitazioni|programmazione|prompts?",
        r"tutte|tutti|tue|tuoi|sue|suoi|qualsiasi|ogni|precedenti|prima|sopra|"
        r"iniziali|originali|sistema|ricevute|date|imposte",
    ),
    "fr": (
        r"ignor(?:e|ez|er|ons|ant)|oubli(?:e|ez|er|ons|ant)|ecart(?:e|ez)|neglig(?:e|ez)|"
        r"(?:ne\s+)?(?:tiens|tenez)\s+pas\s+compte\s+d|(?:fais|faites)\s+abstraction\s+d|"
        r"passe(?:z)?\s+outre|outrepass(?:e|ez)|annul(?:e|ez)|desobei(?:s|ssez)|"
        r"ne\s+(?:suis|suivez|respecte|respectez)\s+pas|(?:arrete|cesse)(?:z)?\s+de\s+suivre",
        r"instructions?|consignes?|directives?|regles?|ordres|indications|commandes|"
        r"restrictions|contraintes|programmation|prompts?",
        r"toutes|tous|tes|vos|ses|precedent(?:e|s|es)?|anterieur(?:e|s|es)?|ci-dessus|"
        r"dessus|avant|initia(?:l|les|ux)|origina(?:l|les|ux)|systeme|recues|donnees|imposees",
    ),
    "de": (
        r"ignorier(?:e|en|t)?|vergiss|vergesst|vergessen|missacht(?:e|en|et)|"
        r"ubergeh(?:e|en)|uberspring(?:e|en)|verwirf|verwerfen|umgeh(?:e|en)|"
        r"beachte\s+(?:nicht|keine)|befolge\s+(?:nicht|keine)",
        r"(?:system)?anweisung(?:en)?|instruktion(?:en)?|befehle|regeln|vorgaben|"
        r"richtlinien|anordnungen|einschrankungen|beschrankungen|aufforderungen|"
        r"programmierung|(?:system)?prompts?",
        r"alle|allen|samtliche|jegliche|deine|deinen|ihre|eure|vorherigen?|vorigen?|"
        r"bisherigen?|obigen?|vorangegangenen?|vorhergehenden?|fruheren?|ursprunglichen?|"
        r"anfanglichen?|zuvor|vorher|oben|bisher|erhaltenen|gegebenen",
    ),
}
_EVERYTHING = (  # "forget (everything) you were told", "ignore (everything) above"
    r"\b(?:olvid(?:a|e|ad)|olvidate\s+de|ignor(?:a|e|ad)|descarta)\s+(?:todo\s+)?(?:lo\s+(?:anterior|"
    r"de\s+(?:arriba|antes)|dicho\s+(?:antes|arriba|hasta\s+ahora)|que\s+(?:se\s+)?(?:te\s+|le\s+)?"
    r"(?:(?:ha|han|he|has|habia|hayan)\s+)?(?:dicho|dije|dijeron|dijo|escrito|indicado|ordenado))"
    r"|cuanto\s+(?:se\s+)?(?:te\s+)?(?:ha\s+)?(?:dicho|escrito))"
    r"|\b(?:esque(?:ca|ce|cam)|ignor(?:e|a)|desconsidere)\s+(?:(?:tudo\s+(?:o\s+)?|o\s+)que\s+"
    r"(?:(?:te|lhe)\s+)?(?:foi|foram)\s+(?:dito|ditas?|pedido|ensinado|instruido)|(?:tudo\s+"
    r"(?:o\s+)?|o\s+)que\s+(?:eu\s+)?(?:te\s+|lhe\s+)?(?:disse|falei|dissemos|escrevi|pedi)|"
    r"tudo\s+(?:o\s+que\s+esta\s+)?acima|(?:tudo\s+)?o\s+(?:texto\s+)?(?:acima|anterior))"
    r"|\b(?:dimentic(?:a|ate|hi)|ignor(?:a|ate))\s+(?:tutto\s+)?(?:(?:quello|cio|quanto)\s+che\s+"
    r"(?:ti\s+|vi\s+)?(?:e\s+stato|sono\s+stat[ei]|hanno|ho|abbiamo)\s+(?:detto|dett[ei]|scritto"
    r"|chiesto)|quanto\s+(?:detto\s+|scritto\s+)?(?:sopra|prima|finora)|(?:quello|cio)\s+che\s+"
    r"precede)|\b(?:dimentic(?:a|ate|hi)|ignor(?:a|ate))\s+tutto\s+(?:sopra|precedente)"
    r"|\b(?:oubli(?:e|ez)|ignor(?:e|ez))\s+(?:tout\s+)?(?:ce\s+qui\s+(?:precede|est\s+(?:au|ci)-"
    r"dessus|a\s+ete\s+dit)|ce\s+qu'on\s+(?:t|vous)'a\s+(?:dit|demande|appris)|ce\s+que\s+"
    r"(?:je|nous)\s+(?:t|vous)'(?:ai|avons)\s+(?:dit|demande|ecrit))"
    r"|\b(?:oubli(?:e|ez)|ignor(?:e|ez))\s+tout\s+(?:ce\s+qui\s+est\s+)?au-dessus"
    r"|\b(?:vergiss|vergesst|vergessen\s+sie|ignoriere|ignorieren\s+sie)\s*,?\s+(?:alles\s*,?\s*)?"
    r"was\s+(?:dir|ihnen|euch|man\s+dir|ich\s+dir|wir\s+dir)\s+(?:\w+\s+){0,3}?(?:gesagt|mitgeteilt"
    r"|beigebracht|aufgetragen|befohlen|vorgegeben|geschrieben)"
    r"|\b(?:vergiss|vergesst|vergessen\s+sie|ignoriere|ignorieren\s+sie)\s+(?:alles\s*,?\s*(?:davor|"
    r"vorher|zuvor|bisherige|oben|obige|vorherige|bisher)|das\s+(?:obige|oben\s+gesagte|vorherige|"
    r"bisherige|zuvor\s+gesagte))"
)
_FROM_NOW = (  # "from now on you are / answer / ignore ..."
    r"\b(?:a\s+partir\s+de\s+(?:ahora|este\s+momento)|de\s+ahora\s+en\s+adelante|desde\s+ahora)"
    r"\s*,?\s+(?:tu\s+)?(?:eres|seras|actua(?:ras|s)?|responde(?:ras)?|contesta(?:ras)?|"
    r"ignora(?:ras)?|hablaras|te\s+llama(?:s|ras)|no\s+(?:tienes|tendras|debes|seguiras)|"
    r"vas\s+a\s+(?:ser|actuar|responder|ignorar|fingir)|debes\s+(?:ignorar|responder|actuar))"
    r"|\b(?:a\s+partir\s+de\s+agora|de\s+agora\s+em\s+diante|daqui\s+(?:em|pra|para)\s+"
    r"(?:a\s+)?(?:diante|frente))\s*,?\s+(?:(?:voce|tu)\s+(?:e|es|sera|seras|vai|deve|nao|age|"
    r"agira|ira|se\s+chama)|aja|responda|ignore|finja|esqueca)"
    r"|\b(?:d'ora\s+in\s+(?:poi|avanti)|da\s+(?:ora|adesso|questo\s+momento)\s+in\s+(?:poi|"
    r"avanti)|a\s+partire\s+da\s+(?:ora|adesso|questo\s+momento))\s*,?\s+(?:tu\s+)?(?:sei|"
    r"sarai|agirai|agisci|risponderai|rispondi|ignorerai|ignora|ti\s+chiami|interpreterai|"
    r"fingerai|non\s+(?:hai|avrai|devi|seguirai)|devi\s+(?:ignorare|rispondere|agire))"
    r"|\b(?:a\s+partir\s+de\s+(?:maintenant|cet\s+instant|ce\s+moment)|desormais|dorenavant|"
    r"des\s+maintenant)\s*,?\s+(?:tu\s+(?:es|seras|vas|dois|agiras|repondras|ignoreras|n'as|"
    r"n'auras|t'appelles|joues|incarnes)|vous\s+(?:etes|serez|allez|devez|agirez|repondrez|"
    r"ignorerez|n'avez)|ignore[sz]?|repon(?:ds|dez)|agis(?:sez)?)"
    r"|\b(?:ab\s+(?:jetzt|sofort|nun)|von\s+(?:jetzt|nun)\s+an|ab\s+diesem\s+moment)\s*,?\s+"
    r"(?:(?:bist|wirst|sollst|musst|antwortest|agierst|spielst|handelst|ignorierst|hast|heisst|"
    r"heißt|darfst|verhaltst)\s+du|ignoriere|antworte|handle|agiere|verhalte\s+dich|spiele)"
)
_NEW_TASK = (  # "new instructions:", "your real task is"
    r"\b(?:nuevas\s+instrucciones|novas\s+instrucoes|nuove\s+istruzioni|nouvelles\s+(?:instructions"
    r"|consignes)|neue\s+anweisungen)\s*:"
    r"|\btus\s+(?:nuevas|verdaderas|reales)\s+instrucciones\s+son|\btu\s+(?:nueva|verdadera|real)"
    r"\s+(?:tarea|mision|funcion)\s+(?:es|sera|consiste)"
    r"|\b(?:suas|tuas)\s+(?:novas|verdadeiras)\s+instrucoes\s+sao|\b(?:sua|tua)\s+(?:nova|"
    r"verdadeira)\s+(?:tarefa|missao|funcao)\s+(?:e|sera)\b"
    r"|\ble\s+tue\s+(?:nuove|vere)\s+istruzioni\s+sono|\bil\s+tuo\s+(?:nuovo|vero)\s+(?:compito|"
    r"obiettivo|ruolo)\s+(?:e|sara)\b"
    r"|\b(?:tes|vos)\s+(?:nouvelles|vraies|veritables)\s+(?:instructions|consignes)\s+sont|"
    r"\b(?:ta|votre)\s+(?:nouvelle|vraie|veritable)\s+(?:tache|mission)\s+(?:est|sera)\b"
    r"|\bdeine\s+(?:neuen|wahren|eigentlichen|echten)\s+anweisungen\s+(?:sind|lauten)|"
    r"\bdeine\s+(?:neue|wahre|eigentliche|echte)\s+aufgabe\s+(?:ist|lautet)"
)
_UNRESTRICTED = (  # a persona or an answer "without restrictions / filters / ethics"
    r"\b(?:eres|seras|actua|responde|contesta|finge\s+(?:ser|que\s+eres)|como\s+si\s+fueras|"
    r"como\s+una?\s+(?:ia|"
    r"asistente|modelo|chatbot))\b[^.\n]{0,60}\bsin\s+(?:ningun[ao]?\s+(?:tipo\s+de\s+)?)?"
    r"(?:restricci(?:on|ones)|filtros?|censura|limites|reglas|limitacion(?:es)?|etica|moral|escrupulos)"
    r"|\b(?:voce\s+e|tu\s+es|aja|responda|finja\s+(?:ser|que\s+e)|como\s+se\s+(?:voce\s+)?fosse|"
    r"como\s+uma?\s+(?:ia|assistente|"
    r"modelo|chatbot))\b[^.\n]{0,60}\bsem\s+(?:nenhum(?:a)?\s+(?:tipo\s+de\s+)?)?(?:restric(?:ao|oes)|"
    r"filtros?|censura|limites|regras|limitac(?:ao|oes)|etica|moral|escrupulos)"
    r"|\b(?:sei|sarai|agisci|rispondi|comportati|fingi\s+di\s+essere|come\s+se\s+fossi|"
    r"come\s+un(?:a|')?\s*(?:ia|"
    r"assistente|modello|chatbot))\b[^.\n]{0,60}\bsenza\s+(?:alcun[ao]?\s+)?(?:restrizion[ie]|"
    r"filtri|censura|limiti|regole|limitazioni|etica|morale|scrupoli)"
    r"|\b(?:tu\s+es|vous\s+etes|agis|reponds|repondez|comporte-toi|fais\s+semblant\s+d'etre|"
    r"(?:fais|faites)\s+comme\s+si|comme\s+si\s+(?:tu\s+etais|vous\s+etiez)|"
    r"pretends\s+etre|en\s+tant\s+qu(?:'|e\s+)(?:ia|assistant|modele))\b[^.\n]{0,60}\bsans\s+"
    r"(?:aucune?\s+)?(?:restrictions?|filtres?|censure|limites?|regles|limitations?|ethique|"
    r"morale|scrupules?)"
    r"|\b(?:du\s+bist|bist\s+du|antworte|agiere|verhalte\s+dich|tu\s+so,?\s+als|als\s+ob\s+du|"
    r"als\s+(?:eine?\s+)?"
    r"(?:ki|assistent|modell|chatbot))\b[^.\n]{0,60}\bohne\s+(?:jegliche\s+|irgendwelche\s+)?"
    r"(?:einschrankung(?:en)?|filter|zensur|grenzen|regeln|beschrankungen|ethik|moral|skrupel)"
    r"|\b(?:modo|modalita|mode|modus)\s+(?:jailbreak|sin\s+(?:restricci(?:on|ones)|filtros|"
    r"censura)|sem\s+(?:restric(?:ao|oes)|filtros|censura)|senza\s+(?:restrizion[ie]|filtri|censura)|sans"
    r"\s+(?:restrictions?|filtres?|censure)|ohne\s+(?:einschrankung(?:en)?|filter|zensur))"
    r"|\bjailbreak-?modus\b"
    r"|\b(?:como\s+si\s+no\s+(?:tuvieras|tuviera)|como\s+se\s+(?:voce\s+)?nao\s+(?:tivesse|tivesses)|"
    r"come\s+se\s+non\s+(?:avessi|avesse)|comme\s+si\s+(?:tu\s+n'avais|vous\s+n'aviez))\s+"
    r"(?:ningun[ao]?\s+|nenhum[a]?\s+|alcun[ae]?\s+|aucune?\s+|plus\s+de\s+|de\s+|d')?"
    r"(?:restricci(?:on|ones)|restric(?:ao|oes)|restrizion[ie]|restrictions?|filtros|filtri|filtres|limites|limiti|"
    r"reglas|regras|regole|regles|censura|censure|etica|ethique)"
    r"|\bals\s+ob\s+du\s+(?:keine|keinerlei)\s+(?:einschrankung(?:en)?|filter|grenzen|regeln|zensur)"
)
_DAN = (  # the "Do Anything Now" persona: "DAN" must be upper case in the text
    r"\b(?:modo|modalita|mode|modus)\s+dan\b|\bdan-?modus\b"
    r"|\b(?:eres|seras|sei|sarai|tu\s+es|du\s+bist|voce\s+e|vous\s+etes)\s+(?:ahora\s+|ora\s+|"
    r"agora\s+|maintenant\s+|jetzt\s+|nun\s+)?dan\b"
)
_EXTRACT = (  # "show me your system prompt / hidden instructions"
    r"\b(?:muestra(?:me)?|revela(?:me)?|dime|imprime|repite|escribe|copia|comparte|ensename|"
    r"devuelve(?:me)?|traduce|enumera|resume|cual(?:es)?\s+(?:es|son|era|eran)|dame)\b[^.?!\n]{0,40}?\b(?:(?:tu|tus|el|la|las|su|sus)\s+"
    r"(?:prompt|mensaje|instrucciones|indicaciones|reglas)\s+(?:(?:de|del)\s+sistema|iniciales?|"
    r"originales?|ocult[oa]s?|secret[oa]s?|intern[oa]s?|confidenciales?)|(?:tu|su)\s+prompt\b)"
    r"|\b(?:mostre|mostra|revele|revela|diga|diz|imprima|repita|escreva|copie|retorne|traduza|"
    r"liste|resuma|qual\s+(?:e|era)|quais\s+(?:sao|eram))\b[^.?!\n]{0,40}?\b(?:(?:seu|sua|seus|suas|o|a|os|as|teu|tua|teus|"
    r"tuas)\s+(?:prompt|mensagem|instrucoes|regras|orientacoes)\s+(?:(?:do|de)\s+sistema|"
    r"inicia(?:l|is)|origina(?:l|is)|ocult[oa]s?|secret[oa]s?|intern[oa]s?|confidencia(?:l|is))|"
    r"(?:seu|teu)\s+prompt\b)"
    r"|\b(?:mostra(?:mi)?|rivela(?:mi)?|dimmi|stampa|ripeti|scrivi|copia|restituisci|traduci|"
    r"elenca|riassumi|qual\s+e|quali\s+sono|dammi)\b[^.?!\n]{0,40}?\b(?:(?:il\s+tuo|la\s+tua|i\s+tuoi|le\s+tue|il|la|le|i)\s+(?:prompt|"
    r"messaggio|istruzioni|regole|indicazioni)\s+(?:di\s+sistema|del\s+sistema|iniziali|originali"
    r"|nascost[oie]|segret[oie]|intern[oie]|riservat[oie])|(?:il\s+tuo|i\s+tuoi)\s+prompt\b)"
    r"|\b(?:montre(?:z)?(?:-moi)?|revele(?:z)?(?:-moi)?|dis-moi|dites-moi|affiche(?:z)?|imprime|"
    r"repete(?:z)?|ecri(?:s|vez)|donne(?:z)?-moi|renvoie|retourne|tradui(?:s|sez)|resume(?:z)?|"
    r"quel(?:le)?s?\s+(?:est|sont|etait|etaient))\b[^.?!\n]{0,40}?\b(?:(?:ton|ta|tes|votre|vos|le|la|les)\s+(?:prompt|message|instructions?|"
    r"consignes?|regles)\s+(?:systeme|du\s+systeme|de\s+systeme|initia(?:l|les?|ux)|"
    r"origina(?:l|les?|ux)|cache(?:e|s|es)?|secret(?:e|s|es)?|internes?|confidentiel(?:le)?s?)|"
    r"(?:ton|votre)\s+prompt\b)"
    r"|\b(?:zeig(?:e|en)?|verrat|verrate|gib|geben|nenne?|drucke?|wiederhole|schreib(?:e)?|"
    r"teile?|ubersetze|fasse|liste|was\s+(?:ist|sind|war|waren))\b[^.?!\n]{0,40}?\b(?:dein(?:e|en)?|ihr(?:e|en)?|"
    r"den|die|das)\s+(?:system-?prompt|system-?anweisungen|system-?nachricht|(?:ursprunglichen?|"
    r"anfanglichen?|initialen?|versteckten?|geheimen?|internen?|vertraulichen?)\s+(?:anweisungen|"
    r"prompt|instruktionen|regeln|nachricht|vorgaben))"
    r"|\b(?:repite|repita|ripeti|repete(?:z)?|wiederhole)\s+(?:todo\s+|tutto\s+|tout\s+)?"
    r"(?:el\s+texto|o\s+texto|il\s+testo|le\s+texte|den\s+(?:gesamten\s+)?text|las\s+palabras|"
    r"as\s+palavras|le\s+parole|les\s+mots|die\s+worter)\s+(?:anterior(?:es)?|de\s+arriba|acima|"
    r"sopra|precedent[ei]|precedents|ci-dessus|au-dessus|oben|davor)"
)


def _override(verbs: str, targets: str, quals: str) -> str:
    return (
        rf"\b(?:{verbs})\b(?=[^.!?\n]{{0,90}}?\b(?:{quals})\b)"
        rf"[^.!?\n]{{0,50}}?\b(?:{targets})\b"
    )


_DE_LAST = (  # German puts the infinitive last: "alle vorherigen Anweisungen ignorieren"
    rf"\b(?:{_OVERRIDE['de'][2]})\b[^.!?\n]{{0,30}}?\b(?:{_OVERRIDE['de'][1]})\b[^.!?\n]{{0,30}}?"
    r"\b(?:ignorieren|vergessen|missachten|ubergehen|uberspringen|verwerfen|"
    r"nicht\s+(?:mehr\s+)?(?:beachten|befolgen))\b"
)


@dataclass(frozen=True, slots=True)
class I18nRule:
    """One multilingual rule: a pattern over :func:`fold_lower` text, and two checks."""

    category: str
    score: float
    pattern: re.Pattern[str]
    negatable: bool = False  # a match right after "no" / "non" / "ne" / "nicht" is skipped
    word: str = ""  # must appear, in this case, inside the match in the original text

    def matches(self, low: str, text: str) -> Iterator[re.Match[str]]:
        """Matches in ``low`` (``text`` folded and lower-cased, same length) that pass."""
        for m in self.pattern.finditer(low):
            if self.negatable and _NEGATED.search(low, max(0, m.start() - 8), m.start()):
                continue
            if self.word and self.word not in text[m.start() : m.end()]:
                continue
            yield m


_OVERRIDES = [*(_override(*v) for v in _OVERRIDE.values()), _EVERYTHING, _DE_LAST]
I18N_RULES = [
    I18nRule("instruction_override", 0.95, re.compile("|".join(_OVERRIDES), _F), negatable=True),
    I18nRule("instruction_override", 0.85, re.compile(f"{_FROM_NOW}|{_NEW_TASK}", _F)),
    I18nRule("jailbreak_roleplay", 0.95, re.compile(_UNRESTRICTED, _F)),
    I18nRule("jailbreak_roleplay", 0.95, re.compile(_DAN, _F), word="DAN"),
    I18nRule("prompt_extraction", 0.9, re.compile(_EXTRACT, _F)),
]


def _fold_table() -> dict[int, int]:
    """Accented Latin letters -> their base letter (one character each); typographic apostrophe."""
    table = {0x2019: ord("'")}
    for c in range(0xC0, 0x250):
        parts = unicodedata.normalize("NFD", chr(c))
        if len(parts) > 1 and parts[0].isascii() and parts[0].isalpha():
            table[c] = ord(parts[0])
    return table


_ACCENTS = _fold_table()


def fold_accents(text: str) -> str:
    """``text`` without accents on Latin letters; same length, so offsets still hold."""
    return text.translate(_ACCENTS)


def fold_lower(text: str) -> str:
    """:func:`fold_accents`, lower-cased, still the same length as ``text``."""
    low = fold_accents(text).lower()
    if len(low) != len(text):  # e.g. "İ" lower-cases to two characters
        low = "".join(c.lower()[0] for c in fold_accents(text))
    return low
