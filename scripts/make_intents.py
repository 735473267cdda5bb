#!/usr/bin/env python3
"""Generate qbench's embedded synthetic customer-support intent dataset.

qbench normally benchmarks classifiers on Hugging Face hub datasets, but some benchmark machines
(air-gapped GPU boxes, locked-down CI) cannot reach the hub. For them the plugin ships a default
dataset, qbench_plugin/data/intents/{train,test}.jsonl, and this script is its only source: stdlib
only, no network, one random.Random(seed), so a given seed always yields byte-identical files.

It imitates an Amazon-style support inbox: 23 intents x (200 train + 50 test) short, medium and
long (filler-padded) utterances. 14% of each intent's test rows come from templates held out of
train; the rest reuse train templates, but never a train row's core sentence.

Usage: python scripts/make_intents.py [--out DIR] [--seed 13]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import tempfile
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "qbench_plugin" / "data" / "intents"
BUCKETS = {"short": (2, 8), "medium": (9, 25), "long": (26, 60)}  # words per utterance
TRAIN_MIX = {"short": 70, "medium": 90, "long": 40}  # 200 train rows per intent
TEST_MIX = {"short": 17, "medium": 23, "long": 10}  # 50 test rows per intent...
HELDOUT_MIX = {"short": 2, "medium": 3, "long": 2}  # ...7 (14%) of them from templates never used in train
HOLDOUT_FRACTION = 0.25  # share of each intent's short and medium templates kept out of train
MAX_CORE_REUSE = 4  # how often one rendered core sentence may recur (with other decoration) per split
MAX_ATTEMPTS = 5000


def split_list(spec: str) -> list[str]:
    """Split a '|'-separated, freely wrapped string into whitespace-normalised items."""
    return [" ".join(item.split()) for item in spec.split("|") if item.strip()]


SLOT_VALUES = {key: split_list(values) for key, values in {
    "product": """wireless earbuds|coffee maker|yoga mat|phone case|laptop stand|air fryer|running shoes|desk lamp|
        bluetooth speaker|backpack|electric toothbrush|blender|winter jacket|smart watch|e-reader|office chair|
        hair dryer|water bottle|board game|usb-c charger|robot vacuum|baby monitor|throw blanket|gaming mouse|
        rice cooker|mechanical keyboard|standing fan|dog bed|cast iron pan|security camera""",
    "carrier": "UPS|FedEx|USPS|DHL|Amazon Logistics|OnTrac|the courier",
    "city": """Seattle|Austin|Denver|Chicago|Boston|Phoenix|Atlanta|Portland|Miami|San Diego|Columbus|Nashville|
        Minneapolis|Raleigh|Salt Lake City|Pittsburgh""",
    "when": """yesterday|last week|two days ago|on Monday|over the weekend|earlier today|a few days ago|last month|
        on Friday|this morning""",
    "month": "January|February|March|April|May|June|July|August|September|October|November|December",
    "payment": "credit card|debit card|PayPal account|Visa card|Mastercard|bank card",
    "code": "SAVE10|WELCOME15|SPRING20|FREESHIP|HOLIDAY25|NEWUSER5|FALL30|VIP10|TAKE15|SUMMER12|BACK2SCHOOL|EXTRA5",
    "color": "black|white|navy blue|red|green|grey|pink|beige|silver",
    "size": "S|M|L|XL|8|9.5|10|11|32x30",
    "device": "phone|laptop|tablet|work computer|iPad|smart tv|desktop|android phone",
    "name": "Maria|James|Priya|Daniel|Aisha|Tom|Elena|Kevin|Sofia|Marcus|Hannah|Luis|Grace|Omar|Chloe|Ben",
    "surname": "Johnson|Garcia|Patel|Nguyen|Smith|Okafor|Miller|Rossi|Kim",
    "relative": "sister|mom|dad|son|daughter|best friend|husband|wife|grandma",
    "street_name": "Oak|Maple|Pine|Cedar|Elm|Lake|Hill|Park|River|Sunset",
    "street_type": "Street|Avenue|Road|Lane|Drive|Court",
}.items()}
# Every fifth value of each list only ever appears in test, so shared templates get unseen slot values.
TEST_ONLY_VALUES = {key: set(values[4::5]) for key, values in SLOT_VALUES.items()}

OPENERS = split_list("""hi there.|hello.|good morning.|good afternoon.|hey.|hello customer service.|
    hi, i hope you are doing well.|hi team.|hello, thanks for reading this.|dear support team.""")
CONTEXT = split_list("""i have been a customer for {years} years.|i live in {city}.|my name is {name}.|
    i am writing from my phone, so sorry if this is brief.|this is my first time contacting support.|
    i already looked through the help pages.|i usually have no issues with your service.|
    i tried the chat earlier but it disconnected.|i am at work right now so email is best.|
    i shop here almost every week.|my {relative} normally handles our account but i am helping out today.|
    i have a busy week so i want to sort this out quickly.|english is not my first language, sorry.""")
FEELINGS = split_list("""this is really frustrating.|honestly i am pretty annoyed right now.|
    i am not happy about this at all.|this is the second time i am writing about this.|i am losing my patience a bit.|
    i really hope someone can help me this time.|sorry for the long message.|i know you are busy.|
    it has been a stressful week.|i do not want to make a big deal out of it.""")
CLOSINGS = split_list("""thanks.|thank you!|thanks in advance.|please help.|i appreciate it.|any help is appreciated.|
    thank you for your time.|please let me know.|looking forward to your reply.|cheers.""")
MEDIUM_PREFIXES = split_list("""hi,|hello,|hey,|hi there,|good morning,|good evening,|quick question,|
    sorry to bother you, but|hello team,|excuse me,|um,|ok so|yes hi,""")
SHORT_PREFIXES = ["hi,", "hey,", "hello,", "hi there,", "um,"]
SHORT_SUFFIXES = ["thanks", "thank you", "please help", "asap please"]

# "= label:" starts an intent: its short templates, "||", then its medium templates; "|" separates templates.
INTENT_SPEC = """
= order_status: where is my order? | status of order {order} | has my order shipped yet? | any update on order
{order}? | is my {product} order confirmed? || can you tell me the current status of my order {order}? | i placed an
order {when} and want to know if it has been processed yet. | is my {product} order still being prepared or has it
shipped? | i would like an update on order {order}, it still says processing. | could you check whether my order for
the {product} went through? | my account shows order {order} as pending, what does that mean? | i ordered a {product}
{when}, can you tell me where things stand? | has anything happened with order {order} since i placed it {when}? |
what is the status of the {product} i bought {when}? | the order page for {order} has not changed in days, is it still
active?
= cancel_order: cancel my order | cancel order {order} | please cancel the {product} | i want to cancel order {order}
| stop my {product} order || i need to cancel order {order} before it ships. | i ordered a {product} by mistake
{when}, please cancel it. | can you cancel my order for the {product}? i no longer need it. | i changed my mind about
order {order}, please cancel the whole thing. | is it too late to cancel the {product} i ordered {when}? | please
cancel order {order} and put the money back on my {payment}. | i accidentally placed the same order twice, can you
cancel one of them? | i found the {product} in a local store so i would like to cancel my order. | please do not ship
order {order}, i want it cancelled. | the cancel button is greyed out for order {order}, can you cancel it for me?
= refund_request: i want a refund | refund for order {order} | where is my refund? | refund my {amount} please | money
back for the {product} || i returned the {product} {when} but i still have not received my refund. | can i get a
refund of {amount} for order {order}? | i would like my money back for the {product}, it did not work as described. |
how long does it take for a refund to show up on my {payment}? | you said my refund of {amount} was processed but i do
not see it. | please refund the {amount} i was charged for order {order}. | i was promised a refund {when} and nothing
has arrived yet. | can you refund me to my original {payment} instead of store credit? | the refund for order {order}
was less than what i paid, i expected {amount}. | i want a full refund for the {product}, not a replacement.
= return_item: how do i return this? | return the {product} | return order {order} | start a return for my {product} |
can i return a {product}? || i would like to return the {product} i bought {when}, it does not fit. | how do i print a
return label for order {order}? | what is your return policy for a {product} that has been opened? | can i drop off my
return at a {carrier} location in {city}? | i want to send back the {product}, how many days do i have? | is it
possible to return just one item from order {order}? | please send me a prepaid return label for the {product}. | the
return window for my {product} closes soon, how do i start the return? | i bought the wrong size {product} and need to
send it back. | can i return a {product} that was a gift without the receipt?
= change_shipping_address: change my shipping address | wrong address on order {order} | ship order {order} to my work
address | new address for my {product} order | change address to {city} || i need to change the delivery address on
order {order} to {street}. | i entered my old address by mistake, can you update it to {street}, {city}? | can you
send my {product} to my work address instead? | i just moved to {city}, please change the shipping address for my open
orders. | is it possible to change where order {order} is being delivered? | the address on my order is missing the
apartment number, can you fix it? | please redirect my package to {street} in {city}. | i will be away next week, can
you ship the {product} to my parents' address? | my order {order} is going to the wrong city, it should go to {city}.
| can you update the zip code on order {order}? i typed it wrong.
= payment_problem: my payment failed | card declined at checkout | charged twice for order {order} | can't pay with my
{payment} | card ending {last4} keeps failing || my {payment} keeps getting declined at checkout even though it works
everywhere else. | i was charged {amount} twice for the same order {order}. | the checkout page gives me a payment
error every time i try to pay. | why was my card ending in {last4} charged {amount} when nothing shipped? | i updated
my card but the payment for order {order} still failed. | there is a pending charge of {amount} on my statement that i
do not recognize. | i cannot add my {payment} as a payment method, it shows an error. | my order is stuck because the
payment did not go through, what should i do? | can you tell me why my card ending in {last4} was declined? | i got an
email saying my payment for the {product} needs attention.
= track_package: track my package | tracking number for order {order} | where is my package? | track order {order} |
{carrier} tracking not working || can you send me the tracking number for order {order}? | the {carrier} tracking link
says label created and nothing else. | where can i see the tracking details for my {product}? | my tracking shows the
package in {city}, what does that mean? | how do i track a package that was shipped with {carrier}? | the tracking
number you gave me does not work on the {carrier} website. | i would like to follow the delivery of order {order} step
by step. | the tracking page has not updated in {days} days, where is the package now? | is there a way to get text
updates for my {carrier} shipment? | which carrier is delivering my {product} and what is the tracking number?
= delivery_delayed: my package is late | delivery delayed again | order {order} is late | still waiting for my
{product} | {product} missed the delivery date || my {product} was supposed to arrive {when} but it still has not
come. | the delivery date for order {order} keeps getting pushed back. | it has been {days} days past the estimated
delivery and nothing has shown up. | the {carrier} tracking says delayed, when will my package actually arrive? | i
paid for fast shipping and my order {order} is already late. | my package has been stuck in {city} for {days} days. |
why does my order say arriving late when it was promised for today? | i needed the {product} for an event and the
delivery is now delayed. | the expected delivery was {when}, what is causing the delay? | every day the delivery
estimate for my {product} moves back another day.
= damaged_item: item arrived damaged | my {product} is broken | damaged package from {carrier} | the {product} came
cracked | box was crushed, {product} damaged || my {product} arrived with a cracked screen, what can i do? | the box
for order {order} was crushed and the {product} inside is broken. | the {product} i received {when} is dented and
scratched. | when i opened the package the {product} was in pieces. | my {product} arrived damaged and leaking, i want
a replacement. | the {carrier} driver left the package in the rain and the {product} got ruined. | part of the
{product} snapped off as soon as i took it out of the box. | the item in order {order} looks used and has damage on
the side. | i have photos of the damage to my {product}, where should i send them? | my {product} does not turn on and
the casing is cracked from shipping.
= wrong_item_received: wrong item received | got the wrong {product} | wrong color sent, i wanted {color} | you sent
me a {product2} | wrong size delivered, i ordered {size} || i ordered a {product} but received a {product2} instead. |
the package for order {order} had someone else's item in it. | you sent the {color} one but i ordered it in {color2}.
| i received the wrong size, i ordered a {size} and got something else. | the item in my box does not match what is
listed on order {order}. | i got a {product2} that i never ordered, what should i do with it? | the {product} you sent
is a different model from the one i paid for. | my order {order} arrived but it is completely the wrong product. | the
label says {product} but the box contains a {product2}. | the {product} you sent is from a different brand than the
one i ordered.
= missing_item: item missing from order | package was empty | only got half of order {order} | {product} missing from
box | order {order} incomplete || my order {order} arrived but the {product} was not in the box. | i ordered {qty}
items and only one came in the package. | the {product} is missing the charger and the manual. | i received the box
for order {order} but one item is missing. | the packing slip lists the {product} but it was not included. | my
delivery came without the {product}, everything else was there. | there were supposed to be two boxes for order
{order} and i got one. | the {product} arrived without the screws needed to assemble it. | can you send the missing
item from the order i got {when}? | the envelope was open and the {product} was not inside.
= change_order: change my order | modify order {order} | add a {product} to my order | change the size to {size} |
edit order {order} || can i add another {product} to order {order} before it ships? | i need to change the size on my
order from {size} to {size2}. | please change the color of the {product} in order {order} to {color}. | i want to
update the quantity of the {product} to {qty}. | is it possible to remove one item from my order and keep the rest? |
can you switch my shipping speed to express on order {order}? | i would like to swap the {product} for a {product2} in
the same order. | i made a mistake on my order {when}, can i still edit it? | how do i modify an order that has not
shipped yet? | please upgrade the {product} in my order to the bigger model.
= product_availability: is the {product} in stock? | when will the {product} be back? | {product} out of stock | do
you have the {product} in {color}? | restock date for the {product}? || the {product} has been out of stock for weeks,
when will you get more? | do you have the {product} available in {color} or only in black? | can you tell me if the
{product} ships to {city}? | is the {product} available in size {size}? | i want to buy {qty} of the {product} but it
says only one is left. | will the {product} be available before the holidays? | is there a way to get notified when
the {product} is back in stock? | the {product} says currently unavailable, is it discontinued? | can i preorder the
{product} while it is sold out? | why can i not add the {product} to my cart, is it unavailable?
= product_information: {product} dimensions? | what material is the {product}? | is the {product} waterproof? | specs
for the {product} | does the {product} come with batteries? || can you tell me the dimensions and weight of the
{product}? | is the {product} compatible with my phone? | what is the battery life of the {product}? | does the
{product} come with a charger or do i buy it separately? | what is the difference between the two versions of the
{product}? | is the {product} dishwasher safe? | what size should i get in the {product} if i am usually a {size}? |
how loud is the {product} when it is running? | does the {product} need to be assembled when it arrives? | what are
the care instructions for the {product}?
= warranty_claim: warranty claim for my {product} | is my {product} under warranty? | warranty repair please |
{product} stopped working, warranty? | file a warranty claim for order {order} || my {product} stopped working after
{months} months, is it still under warranty? | i bought the protection plan for the {product}, how do i file a claim?
| the {product} broke after normal use, can i get it repaired under warranty? | how long is the manufacturer warranty
on the {product}? | my {product} will not charge anymore, does the warranty cover that? | i need to make a warranty
claim for order {order}. | the {product} has a defect that started {when}, will the warranty replace it? | what
information do you need to process a warranty claim for my {product}? | the {product} motor died after {months}
months, i want to use the warranty. | does the extended warranty on my {product} cover accidental damage?
= account_login_problem: can't log in | forgot my password | can't sign in on my {device} | no login code sent to
{phone} | password reset for {email} not working || i keep getting an incorrect password message even though i reset
it {when}. | my account {email} got locked after too many login attempts. | i am not receiving the verification code
to sign in on my {device}. | the password reset email never arrives at {email}. | i cannot log in on the app on my
{device} but it works on the website. | two step verification keeps sending codes to my old phone number. | it says
there is no account with {email} but i ordered from you {when}. | i was logged out and now it will not accept my
password. | someone may have accessed my account, i cannot sign in anymore. | the sign in page just keeps loading on
my {device} and never lets me in.
= update_account_details: change my email to {email} | update my phone number to {phone} | change account name to
{name} | make my {payment} the default | edit my profile || i want to change the email address on my account to
{email}. | how do i update the phone number linked to my account to {phone}? | please change the name on my account to
{name}. | i need to update my billing address to {street}, {city}. | can i change my default payment method to my
{payment}? | where do i edit my saved addresses in my profile? | i would like to update my account details since i
moved to {city}. | how do i change my password? i am logged in right now. | can you remove my old card ending in
{last4} from my account? | my last name changed to {surname}, how do i update my profile?
= subscription_cancel: cancel my subscription | stop my membership | end my prime membership before {month} | stop
subscribe and save for the {product} | stop the {amount} monthly charge || i want to cancel my prime membership before
it renews. | please stop my subscribe and save delivery for the {product}. | how do i turn off auto renewal on my
membership? | i was charged {amount} for a membership i did not want, please cancel it. | i no longer use the
streaming service, cancel my subscription. | can i cancel my free trial before i am charged {amount}? | please end my
monthly subscription effective today. | i signed up for the membership by accident {when}, how do i cancel? | where is
the option to cancel my recurring order of the {product}? | stop billing my {payment} for the monthly plan.
= promo_code_issue: promo code not working | code {code} invalid for order {order} | coupon won't apply to the
{product} | is code {code} expired? | {code} doesn't work || the promo code {code} says it is invalid at checkout. | i
entered {code} but the discount was not applied to my total. | my coupon for {amount} off did not come off the price.
| the email said {code} was valid until {month} but it is not working. | can you apply the {code} discount to my order
{order} after the fact? | the coupon on the {product} page disappeared when i checked out. | why does it say my promo
code is not eligible for the {product}? | i forgot to use my discount code on order {order}, can you add it? | the
student discount code is not working for me. | i got the {code} code from a friend but it will not apply.
= gift_card_balance: gift card balance | check my gift card | {amount} gift card not showing | balance on my {amount}
gift card? | gift card from my {relative} not working || how can i check the remaining balance on my gift card? | i
redeemed a {amount} gift card but my balance shows zero. | my gift card balance went down but i did not buy anything.
| the gift card code i got for my birthday says it is already redeemed. | can i use my gift card balance to pay for
the {product}? | i added a gift card {when} and the money is not in my account. | how much gift card money do i have
left after order {order}? | the gift card from my {relative} is not being accepted at checkout. | does my gift card
balance expire? | i want to see the history of my gift card transactions since {month}.
= invoice_request: i need an invoice | invoice for order {order} | download invoice for my {product} | vat invoice for
order {order} | receipt for the {amount} purchase || can you send me an invoice for order {order}? i need it for work.
| where can i download the receipt for the {product} i bought {when}? | i need a tax invoice with my company name on
it. | please email me a copy of the invoice for {amount}. | the invoice for order {order} is missing my business
address. | can i get an itemized receipt for my purchase {when}? | i need a pdf invoice to file an expense report. |
can you reissue the invoice for order {order} with the correct name? | my accountant needs receipts for all orders
placed in {month}. | the invoice shows the wrong amount, it should be {amount}.
= price_match: price match please | {product} cheaper elsewhere | price dropped on order {order} | match {amount} for
the {product}? | price adjustment for the {product} || the {product} i bought {when} is now {amount} cheaper, can i
get the difference? | another store has the {product} for {amount}, will you match that price? | do you offer price
matching with other retailers? | the price of my {product} dropped two days after i ordered it. | can you adjust the
price on order {order} since it went on sale? | i saw the {product} for less on another website, can you match it? |
the same {product} is listed for {amount} by a different seller, can you honor that? | my {product} is on sale now for
much less than i paid. | can i get a partial refund because the price went down on order {order}? | will you match the
black friday price on the {product}?
= speak_to_agent: talk to a human | speak to an agent | agent about order {order} | can someone call me at {phone}? |
real person about my {product} || can i please speak to a real person instead of the bot? | how do i get in touch with
a live agent? | i want to talk to a supervisor about my order {order}. | please transfer me to a human representative,
my name is {name}. | is there a phone number i can call to talk to someone? | the automated answers are not helping, i
need an agent. | can someone from customer service call me back at {phone}? | i would like to chat with a person about
my {product} order. | get me a manager please, the bot keeps misunderstanding my question about order {order}. | what
are your customer service hours for live chat?
"""


def parse_spec(spec: str) -> dict[str, tuple[list[str], list[str]]]:
    """Turn INTENT_SPEC into {label: (short_templates, medium_templates)} in spec order."""
    intents = {}
    for block in spec.split("\n= ")[1:]:
        label, _, body = block.partition(":")
        short, medium = body.split("||")
        intents[label.strip()] = (split_list(short), split_list(medium))
    return intents


INTENTS = parse_spec(INTENT_SPEC)


class Slots(dict):
    """Slot values for one utterance, sampled on first use so repeated placeholders agree."""

    def __init__(self, rng: random.Random, for_test: bool) -> None:
        super().__init__()
        self.rng, self.for_test = rng, for_test

    def pick(self, key: str, exclude: str | None = None) -> str:
        banned = set() if self.for_test else TEST_ONLY_VALUES[key]
        return self.rng.choice([v for v in SLOT_VALUES[key] if v not in banned and v != exclude])

    def __missing__(self, key: str) -> str:
        rng = self.rng
        if key.endswith("2"):  # a second, different value of a slot: {product2}, {color2}, {size2}
            value = self.pick(key[:-1], exclude=self[key[:-1]])
        elif key == "order":
            if rng.random() < 0.7:
                value = f"#{rng.choice('ABCDEFGHJKLMNPRSTUVWXYZ')}{rng.randint(10000, 99999)}"
            else:
                value = f"{rng.randint(100, 999)}-{rng.randint(1000000, 9999999)}-{rng.randint(1000000, 9999999)}"
        elif key == "amount":
            value = f"${rng.randint(6, 480)}.{rng.choice(['99', '49', '00', '95', '19'])}"
        elif key == "street":
            value = f"{rng.randint(2, 980)} {self.pick('street_name')} {self.pick('street_type')}"
        elif key == "email":
            value = f"{self.pick('name').lower()}.{self.pick('surname').lower()}{rng.randint(1, 99)}@example.com"
        elif key == "phone":
            value = f"555-{rng.randint(100, 999)}-{rng.randint(1000, 9999)}"
        elif key == "last4":
            value = f"{rng.randint(0, 9999):04d}"
        elif key in ("days", "months", "years", "qty"):
            value = str(rng.randint(*{"days": (3, 14), "months": (2, 20), "years": (2, 12), "qty": (2, 6)}[key]))
        else:
            value = self.pick(key)
        self[key] = value
        return value


def word_count(text: str) -> int:
    return len(text.split())


def norm_key(text: str) -> str:
    """Dedup key: lowercase alphanumeric tokens, so casing/punctuation variants count as duplicates."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def sentence_case(text: str) -> str:
    text = re.sub(r"(^|[.?!]\s+)([a-z])", lambda m: m.group(1) + m.group(2).upper(), text)
    return re.sub(r"\bi\b", "I", text)


def end_sentence(text: str) -> str:
    return text if text[-1] in ".?!" else text + "."


def decorate(rng: random.Random, core: str, bucket: str) -> str:
    """Wrap a core request in prefixes, intent-neutral filler sentences and closings for its bucket."""
    if bucket == "short":
        text = core
        if rng.random() < 0.3:
            text = f"{rng.choice(SHORT_PREFIXES)} {text}"
        if rng.random() < 0.25:
            text = f"{end_sentence(text)} {rng.choice(SHORT_SUFFIXES)}"
        if rng.random() < 0.35:
            text = text.rstrip(".?!")
    elif bucket == "medium":
        parts = [end_sentence(core)]
        if rng.random() < 0.25:  # a neutral opening sentence, or else maybe a "hi,"-style prefix
            parts.insert(0, rng.choice(OPENERS + CONTEXT + FEELINGS))
        elif rng.random() < 0.55:
            parts[0] = f"{rng.choice(MEDIUM_PREFIXES)} {parts[0]}"
        if rng.random() < 0.4:
            parts.append(rng.choice(CLOSINGS))
        text = " ".join(parts)
        if rng.random() < 0.15:
            text = text.rstrip(".")
    else:
        filler = rng.sample(CONTEXT + FEELINGS, rng.randint(1, 4))
        cut = rng.randint(0, len(filler))
        parts = filler[:cut] + [end_sentence(core)] + filler[cut:]
        if rng.random() < 0.6:
            parts.insert(0, rng.choice(OPENERS))
        if rng.random() < 0.7:
            parts.append(rng.choice(CLOSINGS))
        text = " ".join(parts)
    if text.endswith(".") and rng.random() < 0.06:
        text = text[:-1] + "!"
    return text


def draw(rng: random.Random, pool: dict[str, list[str]], bucket: str, for_test: bool, seen: set[str],
         core_uses: Counter[str], banned_cores: set[str]) -> str:
    """Sample one utterance of the given bucket whose text is new to `seen` (regenerating until it is)."""
    short, medium = pool["short"], pool["medium"]
    lo, hi = BUCKETS[bucket]
    for _ in range(MAX_ATTEMPTS):
        if bucket == "short":
            template = rng.choice(short)
        elif bucket == "medium":
            template = rng.choice(medium if medium and rng.random() < 0.75 else short)
        else:
            template = rng.choice(medium + short)
        slots = Slots(rng, for_test)
        core = template.format_map(slots)
        core_key = norm_key(core)
        if core_key in banned_cores or core_uses[core_key] >= MAX_CORE_REUSE:
            continue
        text = decorate(rng, core, bucket).format_map(slots)  # fillers may use {city}, {name}, ...
        if rng.random() < 0.6:
            text = sentence_case(text)
        key = norm_key(text)
        if lo <= word_count(text) <= hi and key not in seen:
            seen.add(key)
            core_uses[core_key] += 1
            return text
    raise RuntimeError(f"no fresh {bucket} utterance after {MAX_ATTEMPTS} tries; first template: {short[0]!r}")


def bucket_plan(mix: dict[str, int]) -> list[str]:
    return [bucket for bucket, n in mix.items() for _ in range(n)]


def generate(seed: int) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    rng = random.Random(seed)
    seen: set[str] = set()  # norm_key of every text in either split
    train: list[dict[str, str]] = []
    test: list[dict[str, str]] = []
    for label, (short, medium) in INTENTS.items():
        held: dict[str, list[str]] = {}
        shared: dict[str, list[str]] = {}
        for kind, templates in (("short", short), ("medium", medium)):
            hold = set(rng.sample(range(len(templates)), max(1, int(len(templates) * HOLDOUT_FRACTION + 0.5))))
            held[kind] = [t for i, t in enumerate(templates) if i in hold]
            shared[kind] = [t for i, t in enumerate(templates) if i not in hold]
        train_cores: Counter[str] = Counter()
        for bucket in bucket_plan(TRAIN_MIX):
            train.append({"text": draw(rng, shared, bucket, False, seen, train_cores, set()), "label": label})
        # Test rows from shared templates need a core sentence (slot values) that train never used,
        # so only templates with slots qualify there.
        slotted = {kind: [t for t in ts if "{" in t] for kind, ts in shared.items()}
        if not slotted["short"]:
            raise ValueError(f"{label}: every shared short template is slot-free; give more of them slots")
        test_cores: Counter[str] = Counter()
        train_core_keys = set(train_cores)
        shared_mix = {bucket: TEST_MIX[bucket] - HELDOUT_MIX[bucket] for bucket in BUCKETS}
        for pool, mix in ((held, HELDOUT_MIX), (slotted, shared_mix)):
            for bucket in bucket_plan(mix):
                text = draw(rng, pool, bucket, True, seen, test_cores, train_core_keys)
                test.append({"text": text, "label": label})
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def check(train: list[dict[str, str]], test: list[dict[str, str]]) -> None:
    """Fail loudly (also under python -O) if the splits break the dataset's guarantees."""
    problems = []
    for name, rows, mix in (("train", train, TRAIN_MIX), ("test", test, TEST_MIX)):
        per_label = Counter(r["label"] for r in rows)
        if len(per_label) != len(INTENTS) or set(per_label.values()) != {sum(mix.values())}:
            problems.append(f"{name}: unexpected label counts {dict(per_label)}")
        if len({norm_key(r["text"]) for r in rows}) != len(rows):
            problems.append(f"{name}: duplicate texts")
        if not all(r["text"].isascii() for r in rows):
            problems.append(f"{name}: non-ASCII text")
    if {norm_key(r["text"]) for r in train} & {norm_key(r["text"]) for r in test}:
        problems.append("texts shared between train and test")
    if problems:
        raise RuntimeError("; ".join(problems))


def write_jsonl_atomic(path: Path, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def summarize(name: str, rows: list[dict[str, str]], path: Path) -> None:
    lengths = [word_count(r["text"]) for r in rows]
    counts = Counter(next(b for b, (lo, hi) in BUCKETS.items() if lo <= n <= hi) for n in lengths)
    print(f"{name}: {len(rows)} rows, {len({r['label'] for r in rows})} labels, {path.stat().st_size} bytes -> {path}")
    print("  buckets: " + ", ".join(f"{b} {counts[b]} ({100 * counts[b] / len(rows):.0f}%)" for b in BUCKETS))
    print(f"  words: min {min(lengths)}, median {statistics.median(lengths):g}, "
          f"mean {statistics.mean(lengths):.1f}, max {max(lengths)}")
    hist = Counter(5 * (n // 5) for n in lengths)
    print("  histogram: " + " ".join(f"{lo}-{lo + 4}:{hist[lo]}" for lo in sorted(hist)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the embedded synthetic intent dataset.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=13, help="random seed (default: %(default)s)")
    args = parser.parse_args(argv)
    train, test = generate(args.seed)
    check(train, test)
    for name, rows in (("train", train), ("test", test)):
        path = args.out / f"{name}.jsonl"
        write_jsonl_atomic(path, rows)
        summarize(name, rows, path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
