//! Built-in calibration text for int8: (query, passage) pairs of the kinds a reranker sees (web
//! search, questions, product and technical search, several languages), written for xbench. Their
//! activations give each encoder product's per-channel ranges, from which int8 smooths outlier
//! channels. They are independent of the test and benchmark data.

pub const PAIRS: &[(&str, &str)] = &[
    ("how long to boil an egg", "For a soft yolk, lower the egg into boiling water and cook it for six minutes, then cool it under cold water."),
    ("how long to boil an egg", "The museum is open every day except Monday, from ten in the morning until six in the evening."),
    ("symptoms of dehydration", "Thirst, dark urine, dizziness and a dry mouth are early signs that the body has lost more water than it took in."),
    ("symptoms of dehydration", "Our quarterly revenue grew by four percent, driven mostly by subscriptions in the northern region."),
    ("best laptop for programming under 1000 dollars", "A 14-inch model with 16 GB of memory, a fast SSD and a comfortable keyboard handles compilers and containers well."),
    ("best laptop for programming under 1000 dollars", "Tulips should be planted in autumn, about fifteen centimetres deep, with the pointed end facing up."),
    ("what causes the seasons", "Earth's axis is tilted about 23.4 degrees, so each hemisphere leans toward the sun for part of the year and away from it for the rest."),
    ("what causes the seasons", "The recipe calls for two cups of flour, one teaspoon of salt and a packet of dry yeast."),
    ("python read file line by line", "Open the file in a with-statement and iterate over the file object; each iteration yields one line, newline included."),
    ("python read file line by line", "The train to the airport leaves every twenty minutes from platform three."),
    ("who wrote pride and prejudice", "Jane Austen published Pride and Prejudice in 1813; it follows Elizabeth Bennet and Mr Darcy."),
    ("who wrote pride and prejudice", "Replace the filter every three months, or more often if you have pets."),
    ("capital of australia", "Canberra was chosen as a compromise between Sydney and Melbourne and became the capital in 1913."),
    ("capital of australia", "Sydney is the largest city in Australia and home to a famous opera house."),
    ("error connection refused port 5432", "PostgreSQL listens on port 5432 by default; check that the server is running and that listen_addresses includes the host you connect from."),
    ("error connection refused port 5432", "Connection refused means nothing accepted the TCP connection: no process is listening on that address and port."),
    ("waterproof hiking boots women size 39", "Leather boots with a breathable membrane keep feet dry on wet trails; available in sizes 36 to 42."),
    ("waterproof hiking boots women size 39", "These canvas sneakers are light and washable, ideal for summer in the city."),
    ("¿cuál es la montaña más alta del mundo?", "El Everest, en el Himalaya, mide 8.849 metros sobre el nivel del mar."),
    ("quelle est la capitale du canada", "Ottawa, située en Ontario, est la capitale du Canada depuis 1857."),
    ("wie funktioniert eine wärmepumpe", "Eine Wärmepumpe entzieht der Umgebung Wärme und hebt sie mit einem Verdichter auf ein höheres Temperaturniveau."),
    ("interest rate vs apr", "The interest rate is the cost of borrowing the principal; the APR adds fees and other charges, expressed as a yearly rate."),
    ("why is the sky blue", "Sunlight is scattered by molecules in the air, and shorter blue wavelengths scatter much more than red ones."),
    ("why is the sky blue", ""),
];
