"""Keys and JSON Web Tokens for the RequestAuthentication tests, made with jwcrypto (a real
JOSE library, not Weft's code):

  jwt_tokens.py keys DIR           make the test keys in DIR: RSA `rsa-1` and `rsa-2`,
                                   EC P-256 `ec-1`
  jwt_tokens.py jwks DIR KID...    print the public key set of those keys
  jwt_tokens.py sign DIR           read one request per line on stdin,
                                   {"kid": ..., "alg": ..., "claims": {...}},
                                   and print one signed token per line
"""

import json
import os
import sys

from jwcrypto import jwk, jwt

KEYS = {
    "rsa-1": {"kty": "RSA", "size": 2048},
    "rsa-2": {"kty": "RSA", "size": 2048},
    "ec-1": {"kty": "EC", "crv": "P-256"},
}


def load(folder, kid):
    with open(os.path.join(folder, kid + ".json")) as f:
        return jwk.JWK.from_json(f.read())


def main():
    command, folder = sys.argv[1], sys.argv[2]
    if command == "keys":
        for kid, params in KEYS.items():
            key = jwk.JWK.generate(kid=kid, **params)
            with open(os.path.join(folder, kid + ".json"), "w") as f:
                f.write(key.export_private())
    elif command == "jwks":
        keys = [json.loads(load(folder, kid).export_public()) for kid in sys.argv[3:]]
        print(json.dumps({"keys": keys}))
    elif command == "sign":
        for line in sys.stdin:
            request = json.loads(line)
            token = jwt.JWT(
                header={"alg": request["alg"], "kid": request["kid"], "typ": "JWT"},
                claims=request["claims"],
            )
            token.make_signed_token(load(folder, request["kid"]))
            print(token.serialize(), flush=True)
    else:
        sys.exit("unknown command " + command)


if __name__ == "__main__":
    main()
