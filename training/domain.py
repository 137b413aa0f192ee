"""The skills kokichi-tiny learns: arithmetic, counting, repeating a word, greetings, and
staying quiet when nobody speaks. Each item is (task, question text, answer text)."""
import random

ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
        "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
        "nineteen"]
TENS = {2: "twenty", 3: "thirty", 4: "forty"}


def number(n: int) -> str:
    if n < 20:
        return ONES[n]
    t, o = divmod(n, 10)
    return TENS[t] if o == 0 else f"{TENS[t]} {ONES[o]}"


# Words to repeat: concrete, common, unambiguous when spoken alone.
REPEAT_WORDS = """apple banana orange lemon grape cherry peach pear plum melon mango carrot potato
tomato onion garlic pepper bread butter cheese milk water coffee juice sugar salt honey cookie cake
pizza pasta rice soup salad egg chicken fish table chair window door house garden kitchen bedroom
bottle glass plate spoon fork knife cup basket bucket pillow blanket candle mirror clock lamp
pencil paper letter book page picture camera phone radio guitar piano violin drum trumpet music
river ocean mountain valley forest desert island beach island sky cloud rain snow storm thunder
sunshine rainbow winter summer autumn spring morning evening weekend holiday birthday party
doctor teacher farmer pilot sailor painter dancer singer soldier baker tiger lion zebra monkey
rabbit turtle dolphin whale shark eagle parrot penguin spider butterfly elephant giraffe kangaroo
horse donkey camel sheep goat puppy kitten dragon robot rocket planet comet galaxy engine wheel
bicycle tractor airplane helicopter submarine train station bridge tunnel castle tower village
city market library museum hospital school office factory airport harbor circus theater cinema
jacket sweater scarf glove boot sock hat umbrella wallet pocket button zipper ribbon necklace
diamond silver golden copper marble crystal feather leather cotton wool velvet purple yellow
violet crimson emerald turquoise happy funny lucky sleepy quiet gentle brave clever simple
purple window yellow hammer ladder shovel rope anchor compass lantern magnet puzzle kite balloon
whistle trumpet cactus tulip daisy lily rose sunflower mushroom pumpkin coconut pineapple
strawberry blueberry raspberry avocado broccoli cucumber lettuce popcorn pancake waffle sandwich
noodle dumpling yogurt cereal chocolate vanilla cinnamon ginger""".split()
REPEAT_WORDS = sorted(set(REPEAT_WORDS))

GREETINGS = [
    (["hello", "hello there", "hi there"], "hello"),
    (["good morning", "morning"], "good morning"),
    (["good evening"], "good evening"),
    (["good night"], "good night"),
    (["how are you", "how are you doing"], "i am fine thank you"),
    (["thank you", "thanks a lot"], "you are welcome"),
    (["goodbye", "bye bye"], "goodbye"),
]

PLUS = ["what is {a} plus {b}", "{a} plus {b}", "how much is {a} plus {b}", "what's {a} plus {b}",
        "add {a} and {b}", "what do you get when you add {a} and {b}"]
MINUS = ["what is {a} minus {b}", "{a} minus {b}", "how much is {a} minus {b}", "what's {a} minus {b}",
         "subtract {b} from {a}", "take {b} away from {a}"]
AFTER = ["what comes after {n}", "what number comes after {n}", "which number follows {n}",
         "what is the number after {n}"]
BEFORE = ["what comes before {n}", "what number comes before {n}", "which number is before {n}",
          "what is the number before {n}"]
SAY = ["say {w}", "please say {w}", "can you say {w}", "repeat {w}", "say the word {w}",
       "repeat after me {w}"]


def vocabulary():
    """Every word an answer can contain."""
    words = set(ONES) | set(TENS.values()) | set(REPEAT_WORDS)
    for _, ans in GREETINGS:
        words.update(ans.split())
    return sorted(words)


def answers():
    """Every answer kokichi-tiny can give (the judge's grammar, the model voice's clips)."""
    texts = {number(n) for n in range(0, 41)}
    texts |= set(REPEAT_WORDS)
    texts |= {ans for _, ans in GREETINGS}
    return sorted(texts)


def sample(rng: random.Random):
    """One (task, question, answer); the silence task has no question."""
    r = rng.random()
    if r < 0.30:
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        if rng.random() < 0.5:
            return "plus", rng.choice(PLUS).format(a=number(a), b=number(b)), number(a + b)
        a, b = max(a, b), min(a, b)
        return "minus", rng.choice(MINUS).format(a=number(a), b=number(b)), number(a - b)
    if r < 0.45:
        if rng.random() < 0.5:
            n = rng.randint(0, 20)
            return "after", rng.choice(AFTER).format(n=number(n)), number(n + 1)
        n = rng.randint(1, 20)
        return "before", rng.choice(BEFORE).format(n=number(n)), number(n - 1)
    if r < 0.80:
        w = rng.choice(REPEAT_WORDS)
        return "repeat", rng.choice(SAY).format(w=w), w
    if r < 0.92:
        qs, ans = rng.choice(GREETINGS)
        return "greeting", rng.choice(qs), ans
    return "silence", "", ""
